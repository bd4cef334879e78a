//! What data-parallel training adds to a step (every rank runs the same loop on its rows of the global batch):
//! the parameter gradients summed over ranks in one flat buffer, one stop decision for all ranks, the global
//! mean of a per-sample metric and the health statistics of the global batch, and a check that the replicas'
//! weights are still the same bits.

use crate::collective::{Buffer, Collective};
use crate::error::{Error, ErrorCode};
use crate::nn::params::Params;
use crate::nn::SiameseNet;
use crate::plan::Stats;
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};

/// Gives every rank rank 0's BatchNorm running statistics, so that the ranks extract the same features for a
/// sharded evaluation. Training never reads them (it normalises with batch statistics), but without `sync_bn` each
/// rank's follow its own share of the batches.
pub fn share_running_stats(comm: &dyn Collective, net: &SiameseNet) -> Result<()> {
    let buffers = net.buffers();
    let mut flat = Vec::new();
    for (_, t) in buffers.iter() {
        flat.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    let mut shared = Buffer::F32(flat);
    comm.broadcast(&mut shared, 0)?;
    let Buffer::F32(shared) = shared else { candle_core::bail!("internal: an f32 broadcast returned f64") };
    let mut map = std::collections::HashMap::new();
    let mut at = 0;
    for (name, t) in buffers.iter() {
        let len = t.elem_count();
        let values = shared
            .get(at..at + len)
            .ok_or_else(|| candle_core::Error::Msg("running statistics of another size".into()))?;
        map.insert(name.to_string(), Tensor::from_slice(values, t.shape(), t.device())?.to_dtype(t.dtype())?);
        at += len;
    }
    net.load_buffers(&map)
}

/// The plan's health statistics of the global batch: each is a mean over samples, and the ranks' shares are equal,
/// so the global one is the mean of the ranks' (one all-reduce of the five numbers).
pub fn global_stats(comm: &dyn Collective, s: &Stats) -> Result<Stats> {
    let local = [s.positive_similarity, s.positive_norm[0], s.positive_norm[1], s.push_norm[0], s.push_norm[1]];
    let Buffer::F64(sum) = comm.all_reduce_sum(&Buffer::F64(local.to_vec()))? else {
        candle_core::bail!("internal: an f64 all-reduce returned f32")
    };
    let m: Vec<f64> = sum.iter().map(|v| v / comm.ranks() as f64).collect();
    Ok(Stats { positive_similarity: m[0], positive_norm: [m[1], m[2]], push_norm: [m[3], m[4]] })
}

/// Replaces every parameter's gradient in `store` by its sum over the ranks, in one all-reduce of all of them
/// (each rank's surrogate already divides by the global batch, so the sum is the single-process gradient).
pub fn all_reduce_grads(comm: &dyn Collective, params: &Params, store: &mut GradStore) -> Result<()> {
    let present: Vec<_> = params.iter().filter_map(|p| store.get(&p.var).map(|g| (p, g.clone()))).collect();
    if present.is_empty() {
        return Ok(());
    }
    let flat = Tensor::cat(&present.iter().map(|(_, g)| g.flatten_all()).collect::<Result<Vec<_>>>()?, 0)?;
    let summed = comm.sum_tensor(&flat)?;
    let mut offset = 0;
    for (p, g) in present {
        let n = g.elem_count();
        store.insert(&p.var, summed.narrow(0, offset, n)?.reshape(g.dims())?);
        offset += n;
    }
    Ok(())
}

/// Whether any rank was asked to stop: every rank stops at the same step boundary, so no collective is left
/// waiting for a rank that left.
pub fn agree_to_stop(comm: &dyn Collective, asked: bool) -> std::result::Result<bool, Error> {
    let votes = comm.all_reduce_sum(&Buffer::F64(vec![if asked { 1.0 } else { 0.0 }])).map_err(job_error)?;
    Ok(matches!(votes, Buffer::F64(v) if v[0] > 0.0))
}

/// The mean of `t` over every rank's rows (each rank holds the same number).
pub fn global_mean(comm: &dyn Collective, t: &Tensor) -> Result<f64> {
    let local = t.to_dtype(DType::F64)?.mean_all()?.reshape(1)?;
    let sum = comm.sum_tensor(&local)?.to_vec1::<f64>()?[0];
    Ok(sum / comm.ranks() as f64)
}

/// A 64-bit FNV-1a hash of the parameters' bits, in their order.
pub fn weights_hash(params: &Params) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in params {
        for x in p.var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            for b in x.to_bits().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(h)
}

/// Fails when the ranks' weights differ after `step` steps: the replicas took different updates (a bug, or a
/// rank whose data or code differs), and training on would average unrelated models.
pub fn check_replicas(comm: &dyn Collective, params: &Params, step: usize) -> std::result::Result<(), Error> {
    let h = weights_hash(params)?;
    // Two 32-bit halves, each exact in an f64.
    let mine = Buffer::F64(vec![(h >> 32) as f64, (h & 0xffff_ffff) as f64]);
    let Buffer::F64(all) = comm.all_gather(&mine).map_err(job_error)? else { unreachable!("f64 in, f64 out") };
    let hashes: Vec<u64> = all.chunks(2).map(|c| ((c[0] as u64) << 32) | c[1] as u64).collect();
    match hashes.iter().position(|&x| x != hashes[0]) {
        None => Ok(()),
        Some(r) => Err(Error::new(
            ErrorCode::RanksDiverged,
            format!("after step {step} the weights of rank {r} differ from rank 0's (hashes {:016x} and {:016x})", hashes[r], hashes[0]),
        )
        .help("every rank must run the same ssl-lang build on the same data and recipe; if they do, this is a bug to report")),
    }
}

/// A collective that failed: another rank left the job.
fn job_error(e: crate::collective::CollectiveError) -> Error {
    Error::new(ErrorCode::RanksLost, format!("the job lost a rank: {e}"))
        .help("the rank that left says why in its own output; fix that and start the job again (`--resume` continues from the last checkpoint)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::memory::MemoryRank;
    use candle_core::{Device, Var};

    fn params(value: f32) -> Params {
        let mut p = Params::new();
        let var = Var::from_tensor(&Tensor::new(&[value, 2.0], &Device::Cpu).unwrap()).unwrap();
        p.push("w", var, crate::nn::params::ParamKind::Weight).unwrap();
        p
    }

    #[test]
    fn replicas_that_drift_apart_are_caught() {
        let results: Vec<std::result::Result<(), Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = MemoryRank::world(3)
                .into_iter()
                .map(|r| s.spawn(move || check_replicas(&r, &params(if r.rank() == 2 { 1.5 } else { 1.0 }), 7)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            let e = r.unwrap_err();
            assert_eq!(e.code, ErrorCode::RanksDiverged);
            assert!(e.message.contains("rank 2") && e.message.contains("step 7"), "{}", e.message);
        }
    }

    #[test]
    fn gradients_are_summed_over_ranks_and_stops_agreed() {
        let sums: Vec<(Vec<f32>, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = MemoryRank::world(2)
                .into_iter()
                .map(|r| {
                    s.spawn(move || {
                        let p = params(1.0);
                        let x = p.iter().next().unwrap().var.as_tensor();
                        let scale = (r.rank() + 1) as f64;
                        let mut store = (x * scale).unwrap().sum_all().unwrap().backward().unwrap();
                        all_reduce_grads(&r, &p, &mut store).unwrap();
                        let g = store.get(x).unwrap().to_vec1::<f32>().unwrap();
                        (g, agree_to_stop(&r, r.rank() == 1).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (g, stop) in sums {
            assert_eq!(g, vec![3.0, 3.0]);
            assert!(stop, "rank 1 asked to stop, so both stop");
        }
    }
}
