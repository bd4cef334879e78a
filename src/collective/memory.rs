//! Ranks as threads of one process, exchanging through shared memory: the in-memory collective `verify --ranks`
//! and the tests run P ranks with. A rank that is dropped (its thread returned, or failed) makes every later
//! collective of the others fail instead of waiting forever.

use super::{Buffer, Collective, CollectiveError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

struct State {
    /// What each rank put in for the current exchange.
    slots: Vec<Option<Buffer>>,
    /// Ranks waiting at the barrier of the current generation.
    arrived: usize,
    generation: u64,
    /// A rank has left the world.
    departed: bool,
}

struct World {
    ranks: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// One rank of an in-process world.
pub struct MemoryRank {
    world: Arc<World>,
    rank: usize,
}

impl MemoryRank {
    /// A world of `ranks` ranks, one handle each (move each into its thread).
    pub fn world(ranks: usize) -> Vec<MemoryRank> {
        let state = State { slots: vec![None; ranks], arrived: 0, generation: 0, departed: false };
        let world = Arc::new(World { ranks, state: Mutex::new(state), changed: Condvar::new() });
        (0..ranks).map(|rank| MemoryRank { world: world.clone(), rank }).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.world.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every rank has arrived; fails if one has left.
    fn barrier<'a>(&'a self, mut s: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>, CollectiveError> {
        let departed = || CollectiveError::new("another rank left the job before this collective");
        if s.departed {
            return Err(departed());
        }
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.world.ranks {
            s.arrived = 0;
            s.generation += 1;
            self.world.changed.notify_all();
            return Ok(s);
        }
        while s.generation == generation {
            if s.departed {
                return Err(departed());
            }
            s = self.world.changed.wait(s).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        Ok(s)
    }

    /// Puts `local` in this rank's slot, then returns every slot once all ranks have put theirs.
    fn exchange(&self, local: Option<&Buffer>) -> Result<Vec<Option<Buffer>>, CollectiveError> {
        let mut s = self.lock();
        s.slots[self.rank] = local.cloned();
        let s = self.barrier(s)?;
        let all = s.slots.clone();
        // A second barrier, so that no rank overwrites its slot before every rank has read it.
        drop(self.barrier(s)?);
        Ok(all)
    }
}

impl Drop for MemoryRank {
    fn drop(&mut self) {
        self.lock().departed = true;
        self.world.changed.notify_all();
    }
}

impl Collective for MemoryRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.world.ranks
    }

    fn all_gather(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        let all: Vec<Buffer> = self.exchange(Some(local))?.into_iter().flatten().collect();
        if all.iter().any(|b| b.len() != local.len()) {
            return Err(CollectiveError::new("ranks gathered buffers of different lengths"));
        }
        Buffer::concat(&all)
    }

    fn all_reduce_sum(&self, local: &Buffer) -> Result<Buffer, CollectiveError> {
        let all: Vec<Buffer> = self.exchange(Some(local))?.into_iter().flatten().collect();
        Buffer::sum(&all)
    }

    fn broadcast(&self, buffer: &mut Buffer, root: usize) -> Result<(), CollectiveError> {
        let mine = (self.rank == root).then_some(&*buffer);
        let all = self.exchange(mine)?;
        match all.into_iter().nth(root).flatten() {
            Some(b) => {
                *buffer = b;
                Ok(())
            }
            None => Err(CollectiveError::new(format!("broadcast from rank {root}, which is not in the job"))),
        }
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_gather_reduce_and_broadcast_in_rank_order() {
        let results: Vec<(Buffer, Buffer, Buffer)> = std::thread::scope(|s| {
            let handles: Vec<_> = MemoryRank::world(3)
                .into_iter()
                .map(|r| {
                    s.spawn(move || {
                        let mine = Buffer::F64(vec![r.rank() as f64, 10.0 + r.rank() as f64]);
                        let gathered = r.all_gather(&mine).unwrap();
                        let summed = r.all_reduce_sum(&mine).unwrap();
                        let mut b = if r.rank() == 1 { Buffer::F64(vec![7.0]) } else { Buffer::F64(vec![]) };
                        r.broadcast(&mut b, 1).unwrap();
                        (gathered, summed, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (gathered, summed, b) in results {
            assert_eq!(gathered, Buffer::F64(vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]));
            assert_eq!(summed, Buffer::F64(vec![3.0, 33.0]));
            assert_eq!(b, Buffer::F64(vec![7.0]));
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
        let mut world = MemoryRank::world(2);
        let stays = world.pop().unwrap();
        drop(world);
        let err = stays.all_reduce_sum(&Buffer::F32(vec![1.0])).unwrap_err();
        assert!(err.0.contains("left the job"), "{err}");
    }
}
