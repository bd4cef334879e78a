//! The recipe (`train NAME { ... }`): a typed schema with a default for every field. Values are
//! expressions in the surface syntax (`sgd(lr = 0.1)`, `[crop(scale = [0.3, 1.0]), hflip(0.5)]`),
//! decoded here into plain Rust values, with a coded diagnostic for every wrong one.

use super::args::bind;
use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};
use crate::syntax::ast::{Expr, ExprKind, Field, Train};
use serde::Serialize;
use std::fmt;

/// Where the images come from (`--data DIR` replaces any source's directory).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Data {
    /// Fashion-MNIST: the Debian package's directory if installed, else the bundled subset.
    FashionMnist,
    /// Fashion-MNIST IDX files in this directory.
    FashionMnistDir(String),
    /// MNIST IDX files (the same four file names and format) in this directory.
    Mnist(String),
    /// The binary CIFAR-10 (`data_batch_1..5.bin`, `test_batch.bin`) in this directory or its
    /// `cifar-10-batches-bin/`.
    Cifar10(String),
    /// The binary CIFAR-100 (`train.bin`, `test.bin`, fine labels) in this directory or its `cifar-100-binary/`.
    Cifar100(String),
    /// The binary STL-10 (`unlabeled_X.bin`, `train_X.bin`/`train_y.bin`, `test_X.bin`/`test_y.bin`) in this
    /// directory or its `stl10_binary/`.
    Stl10(String),
    /// PNG and JPEG images: one sub-folder per class, or a flat folder without labels.
    ImageFolder {
        /// The folder.
        dir: String,
        /// Side of the square every image is resized (shorter side) and centre-cropped to.
        size: usize,
        /// Skip (and count) unreadable files instead of stopping at the first.
        skip_bad: bool,
    },
}

/// The per-channel normalisation the network sees the images with.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// The data set's own statistics: published values for CIFAR and STL-10, computed for image folders, none
    /// (pixels in [0, 1]) for Fashion-MNIST and MNIST.
    #[default]
    Dataset,
    /// Pixels in [0, 1], unnormalised.
    None,
    /// These means and standard deviations, one per channel.
    MeanStd {
        /// Mean per channel.
        mean: Vec<f64>,
        /// Standard deviation per channel.
        std: Vec<f64>,
    },
}

impl Normalize {
    /// The default, which run records leave out (so runs from before the field existed still match).
    pub fn is_dataset(&self) -> bool {
        *self == Normalize::Dataset
    }
}

/// The backbone. Run records write `resnet_mini` as `{widths, blocks}` (as before the standard ResNets existed), the
/// others as `{depth, stem}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Encoder {
    /// `resnet_mini(widths = [...], blocks = n)`: a 3×3 stem of the first width, then one stage of `blocks` basic
    /// blocks per width, stride 2 from the second stage.
    Mini {
        /// Channels of the stem and of each stage.
        widths: Vec<usize>,
        /// BasicBlocks per stage.
        blocks: usize,
    },
    /// `resnet18` or `resnet50(stem = imagenet|cifar)`: torchvision's architecture.
    Standard {
        /// Which ResNet.
        depth: Depth,
        /// Its stem.
        stem: Stem,
    },
}

impl fmt::Display for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoder::Mini { widths, blocks } => {
                let widths: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
                write!(f, "resnet_mini(widths = [{}], blocks = {blocks})", widths.join(", "))
            }
            Encoder::Standard { depth, stem } => {
                let depth = if *depth == Depth::Resnet18 { "resnet18" } else { "resnet50" };
                let stem = if *stem == Stem::Cifar { "cifar" } else { "imagenet" };
                write!(f, "{depth}(stem = {stem})")
            }
        }
    }
}

/// A standard ResNet: torchvision's stage widths 64, 128, 256, 512 with BasicBlocks [2, 2, 2, 2] (ResNet-18) or
/// Bottlenecks [3, 4, 6, 3] of expansion 4 (ResNet-50, stride on the 3×3 as torchvision's v1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Depth {
    /// ResNet-18.
    Resnet18,
    /// ResNet-50.
    Resnet50,
}

/// A standard ResNet's stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 convolution and a 3×3 stride-2 max-pool (ImageNet-sized images).
    Imagenet,
    /// 3×3 stride-1 convolution, no max-pool (CIFAR-sized images, as solo-learn and Lightly use).
    Cifar,
}

/// `mlp(hidden = h, out = o, layers = 2, last_bn = false)`: `layers − 1` times Linear(no bias) + BN + ReLU, then a
/// Linear (with bias unless a BatchNorm follows it) and, with `last_bn`, a BatchNorm (SimSiam's and SimCLR v2's
/// projectors).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mlp {
    /// Hidden width.
    pub hidden: usize,
    /// Output width.
    pub out: usize,
    /// Linear layers, 2 or 3 (run records leave out the default 2).
    #[serde(skip_serializing_if = "is_two")]
    pub layers: usize,
    /// A BatchNorm after the last Linear (left out of run records when off).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub last_bn: bool,
}

impl Mlp {
    /// The two-layer MLP of width `hidden` to `out`, no BatchNorm at the end.
    pub fn new(hidden: usize, out: usize) -> Self {
        Mlp { hidden, out, layers: 2, last_bn: false }
    }
}

fn is_two(n: &usize) -> bool {
    *n == 2
}

/// The momentum (EMA) target.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Momentum {
    /// No target network: targets are the detached online features.
    None,
    /// A fixed rate.
    Constant(f64),
    /// A cosine schedule from `base` to `end` over training.
    Cosine {
        /// Rate at step 0.
        base: f64,
        /// Rate at the last step.
        end: f64,
    },
}

/// The optimiser. `lr: None` means 0.06 × batch / 256.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// SGD with momentum.
    Sgd {
        /// Peak learning rate.
        lr: Option<f64>,
        /// Momentum.
        momentum: f64,
        /// Weight decay.
        weight_decay: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// LARS: SGD with a layer-wise trust ratio; biases and norm parameters excluded.
    Lars {
        /// Peak learning rate.
        lr: Option<f64>,
        /// Momentum.
        momentum: f64,
        /// Weight decay.
        weight_decay: f64,
        /// Trust coefficient.
        eta: f64,
    },
    /// AdamW.
    Adamw {
        /// Peak learning rate.
        lr: Option<f64>,
        /// First-moment rate.
        beta1: f64,
        /// Second-moment rate.
        beta2: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

/// The learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warm-up, then cosine to zero.
    WarmupCosine {
        /// Warm-up length in epochs.
        warmup_epochs: f64,
    },
    /// The peak rate throughout.
    Constant,
}

/// One augmentation of the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// Random resized crop back to the images' side.
    Crop {
        /// Area fraction range.
        scale: [f64; 2],
        /// Aspect-ratio range.
        ratio: [f64; 2],
    },
    /// Horizontal flip with probability p.
    Hflip {
        /// Probability.
        p: f64,
    },
    /// Colour jitter (torchvision's `ColorJitter`) with probability p: brightness, contrast, saturation and hue,
    /// in a random order.
    Jitter {
        /// Brightness strength: a factor uniform in [1 − b, 1 + b].
        brightness: f64,
        /// Contrast strength.
        contrast: f64,
        /// Probability.
        p: f64,
        /// Saturation strength (colour images only); left out of run records when 0, as before the field existed.
        #[serde(skip_serializing_if = "is_zero")]
        saturation: f64,
        /// Hue shift: a fraction of the colour wheel uniform in [−hue, hue], at most 0.5 (colour images only).
        #[serde(skip_serializing_if = "is_zero")]
        hue: f64,
    },
    /// The image's grayscale in every channel (torchvision's `RandomGrayscale`) with probability p.
    Grayscale {
        /// Probability.
        p: f64,
    },
    /// Inverts every value at or above `threshold` (torchvision's `RandomSolarize`) with probability p.
    Solarize {
        /// Probability.
        p: f64,
        /// Threshold in [0, 1].
        threshold: f64,
    },
    /// Additive Gaussian noise.
    Noise {
        /// Standard deviation.
        std: f64,
        /// Probability.
        p: f64,
    },
    /// Gaussian blur.
    Blur {
        /// Range of the standard deviation in pixels, drawn uniformly per image (equal ends: a fixed one).
        sigma: [f64; 2],
        /// Probability.
        p: f64,
    },
    /// Extra local crops, seen only by the online branch.
    Multicrop {
        /// How many local crops.
        local: usize,
        /// Their area fraction range.
        scale: [f64; 2],
        /// Their side in pixels.
        size: usize,
    },
    /// CutMix between samples of the batch.
    Cutmix {
        /// Beta distribution parameter.
        alpha: f64,
        /// Probability.
        p: f64,
    },
}

/// Whether a switch is off (serde's `skip_serializing_if`: a recipe without it serialises as before it existed).
fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether a strength is zero (serde's `skip_serializing_if`).
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Knn {
    /// Neighbours.
    pub k: usize,
    /// Temperature.
    pub t: f64,
    /// Every this many epochs (and at the end).
    pub every: usize,
}

/// Which backbone features the linear probe reads: the last feature map average-pooled to a `grid`×`grid` grid of
/// bins (C·grid² numbers per image). 1 is the global average, the usual backbone feature; on small centred images
/// (Fashion-MNIST's 28×28) a 2×2 grid keeps the coarse layout the raw-pixel probe sees whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Bins per side.
    pub grid: usize,
}

impl Probe {
    /// The global average, which run records leave out (so runs from before the field existed still match).
    pub fn is_global(&self) -> bool {
        self.grid == 1
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe { grid: 1 }
    }
}

/// What training differentiates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// Inject the unified gradient `positive + balance · negative` at each sample's online features.
    #[default]
    Gradient,
    /// Backpropagate the batch-level `total` through every online feature.
    Loss,
}

impl Form {
    /// The default form, which run records leave out (so runs from before the field existed still match).
    pub fn is_gradient(&self) -> bool {
        *self == Form::Gradient
    }
}

/// A fully resolved recipe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recipe {
    /// Images.
    pub data: Data,
    /// Backbone.
    pub encoder: Encoder,
    /// Projector MLP.
    pub projector: Mlp,
    /// Predictor MLP, if any.
    pub predictor: Option<Mlp>,
    /// Target network.
    pub momentum: Momentum,
    /// Pairs per step.
    pub batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Augmentations, in order: both views', or the first view's when `augment2` is set.
    pub augment: Vec<Augment>,
    /// The second view's augmentations, when the views are asymmetric (BYOL's blur and solarisation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment2: Option<Vec<Augment>>,
    /// kNN evaluation, if any.
    pub eval: Option<Knn>,
    /// Which features the linear probe (run whenever `eval` is) reads.
    #[serde(skip_serializing_if = "Probe::is_global")]
    pub probe: Probe,
    /// Checkpoint every this many epochs (and at the end).
    pub checkpoint: usize,
    /// The unified gradient form, or the batch-level loss.
    #[serde(skip_serializing_if = "Form::is_gradient")]
    pub form: Form,
    /// Per-channel normalisation of the images.
    #[serde(skip_serializing_if = "Normalize::is_dataset")]
    pub normalize: Normalize,
    /// Data-parallel training: BatchNorm normalises over the whole batch (statistics and their gradient summed over
    /// ranks) instead of each rank's share.
    #[serde(skip_serializing_if = "is_false")]
    pub sync_bn: bool,
}

impl Recipe {
    /// The augmentations of view `view` (0 or 1) of each pair: `augment` for the first; for the second `augment2`
    /// (or `augment`) and `augment`'s CutMix. Multi-crop's local crops are the first view's only.
    pub fn view_augment(&self, view: usize) -> Vec<Augment> {
        if view == 0 {
            return self.augment.clone();
        }
        let per_image = self.augment2.as_ref().unwrap_or(&self.augment);
        let cutmix = self.augment.iter().filter(|a| matches!(a, Augment::Cutmix { .. }));
        per_image
            .iter()
            .filter(|a| !matches!(a, Augment::Multicrop { .. } | Augment::Cutmix { .. }))
            .chain(cutmix)
            .cloned()
            .collect()
    }
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            data: Data::FashionMnist,
            encoder: Encoder::Mini { widths: vec![32, 64, 128], blocks: 1 },
            projector: Mlp::new(512, 128),
            predictor: None,
            momentum: Momentum::Cosine { base: 0.99, end: 1.0 },
            batch: 256,
            epochs: 20,
            seed: 0,
            optimizer: Optimizer::Sgd { lr: None, momentum: 0.9, weight_decay: 5e-4, nesterov: false },
            schedule: Schedule::WarmupCosine { warmup_epochs: 1.0 },
            augment: vec![
                Augment::Crop { scale: [0.3, 1.0], ratio: [0.75, 4.0 / 3.0] },
                Augment::Hflip { p: 0.5 },
                Augment::Jitter { brightness: 0.4, contrast: 0.4, p: 0.8, saturation: 0.0, hue: 0.0 },
            ],
            augment2: None,
            eval: Some(Knn { k: 200, t: 0.1, every: 1 }),
            probe: Probe::default(),
            checkpoint: 5,
            form: Form::Gradient,
            normalize: Normalize::Dataset,
            sync_bn: false,
        }
    }
}

impl Recipe {
    /// The peak learning rate: as written, or 0.06 × batch / 256.
    pub fn lr(&self) -> f64 {
        let lr = match &self.optimizer {
            Optimizer::Sgd { lr, .. } | Optimizer::Lars { lr, .. } | Optimizer::Adamw { lr, .. } => *lr,
        };
        lr.unwrap_or(0.06 * self.batch as f64 / 256.0)
    }
}

/// Why `recipe` cannot train `objective` in its form (message, help), if it cannot: the loss form needs a `total`,
/// the gradient form a positive term, and `total` covers the two global views only (no multi-crop).
pub fn form_problem(objective: &crate::check::typed::Objective, recipe: &Recipe) -> Option<(String, String)> {
    let name = &objective.name;
    match recipe.form {
        Form::Loss if objective.total.is_none() => Some((
            format!("`form = loss` trains the batch-level loss, but objective `{name}` has no `total = ...`"),
            "add `total = ...` to the objective, or train its gradient form (`form = gradient`)".into(),
        )),
        Form::Loss if recipe.augment.iter().any(|a| matches!(a, Augment::Multicrop { .. })) => Some((
            "`form = loss` differentiates `total`, which sees the two global views only, not multi-crop local views"
                .into(),
            "remove `multicrop(...)` from `augment`, or train the gradient form (`form = gradient`)".into(),
        )),
        Form::Gradient if objective.positive.is_none() => Some((
            format!("objective `{name}` has only a batch-level loss (`total`), so it trains with `form = loss`"),
            "add `form = loss` to the train block, or pass `--set form=loss`".into(),
        )),
        _ => None,
    }
}

/// The recipe fields, for suggestions and documentation.
pub const FIELDS: &[&str] = &[
    "data",
    "encoder",
    "projector",
    "predictor",
    "momentum",
    "batch",
    "epochs",
    "seed",
    "optimizer",
    "schedule",
    "augment",
    "augment2",
    "eval",
    "probe",
    "checkpoint",
    "form",
    "normalize",
    "sync_bn",
];

/// Decodes a train block onto the defaults. Returns the recipe and the span of each field set.
pub fn decode(train: &Train, diagnostics: &mut Vec<Diagnostic>) -> (Recipe, Vec<(String, Span)>) {
    let mut recipe = Recipe::default();
    let mut seen: Vec<(String, Span)> = Vec::new();
    for field in &train.fields {
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == field.name.name) {
            diagnostics.push(
                Diagnostic::new(
                    Code::Duplicate,
                    format!("recipe field `{}` is set twice", field.name.name),
                    field.name.span,
                    "set again here",
                )
                .label(*first, "first set here")
                .help("remove one of them"),
            );
            continue;
        }
        seen.push((field.name.name.clone(), field.name.span));
        set_field(&mut recipe, field, diagnostics);
    }
    (recipe, seen)
}

/// Sets one field from its expression (also used for `--set field=value`).
pub fn set_field(recipe: &mut Recipe, field: &Field, diagnostics: &mut Vec<Diagnostic>) {
    decode_field(recipe, field, diagnostics);
    // The predictor maps the projection space to itself, whatever order the fields were set in.
    if let Some(p) = &mut recipe.predictor {
        p.out = recipe.projector.out;
    }
}

fn decode_field(recipe: &mut Recipe, field: &Field, diagnostics: &mut Vec<Diagnostic>) {
    let mut d = Decoder { diagnostics };
    let v = &field.value;
    let _decoded: Option<()> = match field.name.name.as_str() {
        "data" => d.data(v).map(|x| recipe.data = x),
        "encoder" => d.encoder(v).map(|x| recipe.encoder = x),
        "projector" => d.mlp(v, "a projector (`mlp(...)`)", 512, Some(128)).map(|x| recipe.projector = x),
        "predictor" => d.predictor(v, recipe.projector.out).map(|x| recipe.predictor = x),
        "momentum" => d.momentum(v).map(|x| recipe.momentum = x),
        "batch" => d.int(v, 1, 1 << 20).map(|x| recipe.batch = x),
        "epochs" => d.int(v, 1, 1 << 20).map(|x| recipe.epochs = x),
        "seed" => d.int(v, 0, usize::MAX).map(|x| recipe.seed = x as u64),
        "optimizer" => d.optimizer(v).map(|x| recipe.optimizer = x),
        "schedule" => d.schedule(v).map(|x| recipe.schedule = x),
        "augment" => d.augment(v).map(|x| recipe.augment = x),
        "augment2" => d.augment2(v).map(|x| recipe.augment2 = Some(x)),
        "eval" => d.eval(v).map(|x| recipe.eval = x),
        "probe" => d.probe(v).map(|x| recipe.probe = x),
        "form" => d.form(v).map(|x| recipe.form = x),
        "normalize" => d.normalize(v).map(|x| recipe.normalize = x),
        "checkpoint" => d.int(v, 1, 1 << 20).map(|x| recipe.checkpoint = x),
        "sync_bn" => d.boolean(v).map(|x| recipe.sync_bn = x),
        other => {
            let help = match did_you_mean(other, FIELDS.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the recipe fields are {}", FIELDS.join(", ")),
            };
            d.diagnostics.push(
                Diagnostic::new(
                    Code::RecipeField,
                    format!("the recipe has no field `{other}`"),
                    field.name.span,
                    "unknown field",
                )
                .help(help),
            );
            None
        }
    };
}

/// A constructor in a recipe value: `name` or `name(args)`.
struct Ctor<'e> {
    name: &'e str,
    span: Span,
    args: Vec<Option<&'e Expr>>,
}

struct Decoder<'d> {
    diagnostics: &'d mut Vec<Diagnostic>,
}

impl Decoder<'_> {
    fn wrong<T>(&mut self, e: &Expr, what: String, help: impl Into<String>) -> Option<T> {
        self.wrong_labelled(e, what, "here", help)
    }

    fn wrong_labelled<T>(&mut self, e: &Expr, what: String, label: &str, help: impl Into<String>) -> Option<T> {
        self.diagnostics.push(Diagnostic::new(Code::RecipeValue, what, e.span, label).help(help));
        None
    }

    fn number(&mut self, e: &Expr) -> Option<f64> {
        match &e.kind {
            ExprKind::Number(x) => Some(*x),
            ExprKind::Neg(inner) => match inner.kind {
                ExprKind::Number(x) => Some(-x),
                ExprKind::Error => None,
                _ => self.wrong(e, "expected a number".into(), "write a literal such as `0.5`"),
            },
            ExprKind::Error => None,
            _ => self.wrong(e, "expected a number".into(), "write a literal such as `0.5`"),
        }
    }

    fn float(&mut self, e: &Expr, lo: f64, hi: f64, hi_open: bool) -> Option<f64> {
        let x = self.number(e)?;
        let inside = x >= lo && if hi_open { x < hi } else { x <= hi };
        if inside {
            Some(x)
        } else {
            let range = format!("[{lo}, {hi}{}", if hi_open { ")" } else { "]" });
            let label = format!("not in {range}");
            self.wrong_labelled(
                e,
                format!("expected a number in {range}, found {x}"),
                &label,
                format!("use a value in {range}"),
            )
        }
    }

    fn int(&mut self, e: &Expr, min: usize, max: usize) -> Option<usize> {
        let x = self.number(e)?;
        if x.fract() == 0.0 && x >= min as f64 && x <= max as f64 {
            Some(x as usize)
        } else if x.fract() == 0.0 && x > max as f64 {
            self.wrong_labelled(
                e,
                format!("expected a whole number of at most {max}, found {x}"),
                "too large",
                format!("write a whole number ≤ {max}"),
            )
        } else {
            let label = if x.fract() != 0.0 { "not a whole number" } else { "too small" };
            self.wrong_labelled(
                e,
                format!("expected a whole number of at least {min}, found {x}"),
                label,
                format!("write a whole number ≥ {min}"),
            )
        }
    }

    fn boolean(&mut self, e: &Expr) -> Option<bool> {
        match e.kind {
            ExprKind::Bool(b) => Some(b),
            _ => self.wrong(e, "expected `true` or `false`".into(), "write `true` or `false`"),
        }
    }

    fn pair(&mut self, e: &Expr, lo: f64, hi: f64) -> Option<[f64; 2]> {
        match &e.kind {
            ExprKind::List(items) if items.len() == 2 => {
                let a = self.float(&items[0], lo, hi, false)?;
                let b = self.float(&items[1], lo, hi, false)?;
                if a <= b {
                    Some([a, b])
                } else {
                    self.wrong(e, format!("the range [{a}, {b}] is empty"), "write the smaller bound first")
                }
            }
            _ => self.wrong(e, "expected a pair `[lo, hi]`".into(), "write two numbers in brackets, e.g. `[0.3, 1.0]`"),
        }
    }

    /// A number (both ends of the range) or a pair `[lo, hi]`, within [lo, hi].
    fn number_or_range(&mut self, e: &Expr, lo: f64, hi: f64) -> Option<[f64; 2]> {
        match &e.kind {
            ExprKind::List(_) => self.pair(e, lo, hi),
            _ => self.float(e, lo, hi, false).map(|x| [x, x]),
        }
    }

    /// Reads `name` or `name(args)`, checking the name against `choices` (each with its params).
    fn ctor<'e>(&mut self, e: &'e Expr, what: &str, choices: &[(&str, &[&str])]) -> Option<Ctor<'e>> {
        let (name, span, args): (&str, Span, &[crate::syntax::ast::Arg]) = match &e.kind {
            ExprKind::Name(n) => (n.as_str(), e.span, &[]),
            ExprKind::Call(f, args) => (f.name.as_str(), f.span, args.as_slice()),
            ExprKind::Error => return None,
            _ => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                return self.wrong(
                    e,
                    format!("expected {what}: one of {}", names.join(", ")),
                    format!("write e.g. `{}`", choices[0].0),
                );
            }
        };
        let Some((_, params)) = choices.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            let help = match did_you_mean(name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("choose one of {}", names.join(", ")),
            };
            self.diagnostics.push(
                Diagnostic::new(Code::RecipeValue, format!("`{name}` is not {what}"), span, "unknown").help(help),
            );
            return None;
        };
        let args = bind(name, span, params, args, self.diagnostics)?;
        Some(Ctor { name, span, args })
    }

    fn data(&mut self, e: &Expr) -> Option<Data> {
        let c = self.ctor(
            e,
            "a data set",
            &[
                ("fashion_mnist", &["dir"]),
                ("mnist", &["dir"]),
                ("cifar10", &["dir"]),
                ("cifar100", &["dir"]),
                ("stl10", &["dir"]),
                ("image_folder", &["dir", "size", "skip_bad"]),
            ],
        )?;
        if c.name == "fashion_mnist" && c.args[0].is_none() {
            return Some(Data::FashionMnist);
        }
        let dir = self.required(&c, 0, "dir")?;
        let ExprKind::Str(dir) = &dir.kind else {
            return self.wrong(
                dir,
                "expected a directory as a string".into(),
                format!("write `{}(\"/path/to/dir\")`", c.name),
            );
        };
        let dir = dir.clone();
        Some(match c.name {
            "fashion_mnist" => Data::FashionMnistDir(dir),
            "mnist" => Data::Mnist(dir),
            "cifar10" => Data::Cifar10(dir),
            "cifar100" => Data::Cifar100(dir),
            "stl10" => Data::Stl10(dir),
            _ => Data::ImageFolder {
                dir,
                size: c.args[1].map_or(Some(32), |x| self.int(x, 4, 1024))?,
                skip_bad: c.args[2].map_or(Some(false), |x| self.boolean(x))?,
            },
        })
    }

    /// `dataset`, `none` or `mean_std(mean = [..], std = [..])` with 1 or 3 values each (checked against the
    /// images' channels when they are loaded).
    fn normalize(&mut self, e: &Expr) -> Option<Normalize> {
        let c = self.ctor(e, "a normalisation", &[("dataset", &[]), ("none", &[]), ("mean_std", &["mean", "std"])])?;
        match c.name {
            "dataset" => Some(Normalize::Dataset),
            "none" => Some(Normalize::None),
            _ => {
                let mean = self.required(&c, 0, "mean")?;
                let std = self.required(&c, 1, "std")?;
                let mean = self.channel_values(mean, 0.0, 1.0)?;
                let std = self.channel_values(std, 1e-6, 10.0)?;
                if mean.len() != std.len() {
                    return self.wrong(
                        e,
                        format!(
                            "`mean_std` has {} mean{} but {} std{}",
                            mean.len(),
                            if mean.len() == 1 { "" } else { "s" },
                            std.len(),
                            if std.len() == 1 { "" } else { "s" }
                        ),
                        "give one mean and one std per channel",
                    );
                }
                Some(Normalize::MeanStd { mean, std })
            }
        }
    }

    /// A list of 1 or 3 numbers in [lo, hi]: one per channel.
    fn channel_values(&mut self, e: &Expr, lo: f64, hi: f64) -> Option<Vec<f64>> {
        match &e.kind {
            ExprKind::List(items) if items.len() == 1 || items.len() == 3 => {
                items.iter().map(|i| self.float(i, lo, hi, false)).collect()
            }
            _ => self.wrong(
                e,
                "expected a list of one value per channel (1 for grayscale, 3 for colour)".into(),
                "write e.g. `[0.49, 0.48, 0.45]`",
            ),
        }
    }

    fn encoder(&mut self, e: &Expr) -> Option<Encoder> {
        let c = self.ctor(
            e,
            "an encoder",
            &[("resnet_mini", &["widths", "blocks"]), ("resnet18", &["stem"]), ("resnet50", &["stem"])],
        )?;
        if c.name != "resnet_mini" {
            let depth = if c.name == "resnet18" { Depth::Resnet18 } else { Depth::Resnet50 };
            let stem = match c.args[0] {
                None => Stem::Imagenet,
                Some(s) => {
                    let s = self.ctor(s, "a stem", &[("imagenet", &[]), ("cifar", &[])])?;
                    if s.name == "cifar" {
                        Stem::Cifar
                    } else {
                        Stem::Imagenet
                    }
                }
            };
            return Some(Encoder::Standard { depth, stem });
        }
        let widths = match c.args[0] {
            None => vec![32, 64, 128],
            Some(w @ Expr { kind: ExprKind::List(items), .. }) if !items.is_empty() && items.len() <= 8 => {
                let widths = items.iter().map(|i| self.int(i, 1, 4096)).collect::<Option<Vec<_>>>()?;
                if widths.len() < 2 {
                    return self.wrong(
                        w,
                        "resnet_mini needs a stem width and at least one stage width".into(),
                        "write e.g. `widths = [32, 64, 128]`",
                    );
                }
                widths
            }
            Some(other) => {
                return self.wrong(
                    other,
                    "expected a list of 2 to 8 widths".into(),
                    "write e.g. `widths = [32, 64, 128]`",
                )
            }
        };
        let blocks = c.args[1].map_or(Some(1), |b| self.int(b, 1, 16))?;
        Some(Encoder::Mini { widths, blocks })
    }

    fn mlp(&mut self, e: &Expr, what: &str, hidden: usize, out: Option<usize>) -> Option<Mlp> {
        let c = self.ctor(e, what, &[("mlp", &["hidden", "out", "layers", "last_bn"])])?;
        let hidden = c.args[0].map_or(Some(hidden), |h| self.int(h, 1, 65536))?;
        let out = match (c.args[1], out) {
            (Some(o), _) => self.int(o, 1, 65536)?,
            (None, Some(o)) => o,
            (None, None) => 0,
        };
        let layers = c.args[2].map_or(Some(2), |l| self.int(l, 2, 3))?;
        let last_bn = c.args[3].map_or(Some(false), |b| self.boolean(b))?;
        Some(Mlp { hidden, out, layers, last_bn })
    }

    /// `none` or `mlp(hidden = h)`: the output width is always the projector's (the prediction is
    /// compared with the target's projection), so it is not a setting.
    fn predictor(&mut self, e: &Expr, projector_out: usize) -> Option<Option<Mlp>> {
        let c = self.ctor(e, "a predictor", &[("none", &[]), ("mlp", &["hidden"])])?;
        if c.name == "none" {
            return Some(None);
        }
        let hidden = c.args[0].map_or(Some(512), |h| self.int(h, 1, 65536))?;
        Some(Some(Mlp::new(hidden, projector_out)))
    }

    fn momentum(&mut self, e: &Expr) -> Option<Momentum> {
        let c = self.ctor(e, "a momentum", &[("none", &[]), ("constant", &["rate"]), ("cosine", &["base", "end"])])?;
        match c.name {
            "none" => Some(Momentum::None),
            "constant" => {
                let rate = self.required(&c, 0, "rate")?;
                Some(Momentum::Constant(self.float(rate, 0.0, 1.0, true)?))
            }
            _ => {
                let base = c.args[0].map_or(Some(0.99), |b| self.float(b, 0.0, 1.0, true))?;
                let end = c.args[1].map_or(Some(1.0), |b| self.float(b, 0.0, 1.0, false))?;
                Some(Momentum::Cosine { base, end })
            }
        }
    }

    fn required<'e>(&mut self, c: &Ctor<'e>, i: usize, name: &str) -> Option<&'e Expr> {
        if c.args[i].is_none() {
            self.diagnostics.push(
                Diagnostic::new(
                    Code::RecipeValue,
                    format!("`{}` needs `{name}`", c.name),
                    c.span,
                    format!("`{name}` missing"),
                )
                .help(format!("write `{}({name} = ...)`", c.name)),
            );
        }
        c.args[i]
    }

    fn optimizer(&mut self, e: &Expr) -> Option<Optimizer> {
        let c = self.ctor(
            e,
            "an optimizer",
            &[
                ("sgd", &["lr", "momentum", "weight_decay", "nesterov"]),
                ("lars", &["lr", "momentum", "weight_decay", "eta"]),
                ("adamw", &["lr", "beta1", "beta2", "weight_decay"]),
            ],
        )?;
        let lr = match c.args[0] {
            Some(lr) => Some(self.float(lr, 0.0, 100.0, false)?),
            None => None,
        };
        let opt = |d: &mut Self, i: usize, default: f64, hi: f64, open: bool| {
            c.args[i].map_or(Some(default), |x| d.float(x, 0.0, hi, open))
        };
        Some(match c.name {
            "sgd" => Optimizer::Sgd {
                lr,
                momentum: opt(self, 1, 0.9, 1.0, true)?,
                weight_decay: opt(self, 2, 5e-4, 1.0, false)?,
                nesterov: c.args[3].map_or(Some(false), |b| self.boolean(b))?,
            },
            "lars" => Optimizer::Lars {
                lr,
                momentum: opt(self, 1, 0.9, 1.0, true)?,
                weight_decay: opt(self, 2, 1e-6, 1.0, false)?,
                eta: opt(self, 3, 0.02, 1.0, false)?,
            },
            _ => Optimizer::Adamw {
                lr,
                beta1: opt(self, 1, 0.9, 1.0, true)?,
                beta2: opt(self, 2, 0.999, 1.0, true)?,
                weight_decay: opt(self, 3, 0.05, 1.0, false)?,
            },
        })
    }

    fn schedule(&mut self, e: &Expr) -> Option<Schedule> {
        let c = self.ctor(e, "a schedule", &[("warmup_cosine", &["warmup_epochs"]), ("constant", &[])])?;
        match c.name {
            "constant" => Some(Schedule::Constant),
            _ => Some(Schedule::WarmupCosine {
                warmup_epochs: c.args[0].map_or(Some(1.0), |w| self.float(w, 0.0, 1e6, false))?,
            }),
        }
    }

    fn augment(&mut self, e: &Expr) -> Option<Vec<Augment>> {
        let ExprKind::List(items) = &e.kind else {
            return self.wrong(
                e,
                "expected a list of augmentations".into(),
                "write e.g. `[crop(scale = [0.3, 1.0]), hflip(0.5)]`",
            );
        };
        let mut out = Vec::new();
        for item in items {
            let c = self.ctor(
                item,
                "an augmentation",
                &[
                    ("crop", &["scale", "ratio"]),
                    ("hflip", &["p"]),
                    ("jitter", &["brightness", "contrast", "p", "saturation", "hue"]),
                    ("grayscale", &["p"]),
                    ("solarize", &["p", "threshold"]),
                    ("noise", &["std", "p"]),
                    ("blur", &["sigma", "p"]),
                    ("multicrop", &["local", "scale", "size"]),
                    ("cutmix", &["alpha", "p"]),
                ],
            );
            let Some(c) = c else { continue };
            let a = &c.args;
            let p = |d: &mut Self, i: usize, default: f64| a[i].map_or(Some(default), |x| d.float(x, 0.0, 1.0, false));
            let aug = match c.name {
                "crop" => (|| {
                    Some(Augment::Crop {
                        scale: a[0].map_or(Some([0.3, 1.0]), |x| self.pair(x, 0.01, 1.0))?,
                        ratio: a[1].map_or(Some([0.75, 4.0 / 3.0]), |x| self.pair(x, 0.1, 10.0))?,
                    })
                })(),
                "hflip" => p(self, 0, 0.5).map(|p| Augment::Hflip { p }),
                "jitter" => (|| {
                    Some(Augment::Jitter {
                        brightness: p(self, 0, 0.4)?,
                        contrast: p(self, 1, 0.4)?,
                        p: p(self, 2, 0.8)?,
                        saturation: p(self, 3, 0.0)?,
                        hue: a[4].map_or(Some(0.0), |x| self.float(x, 0.0, 0.5, false))?,
                    })
                })(),
                "grayscale" => p(self, 0, 0.2).map(|p| Augment::Grayscale { p }),
                "solarize" => (|| Some(Augment::Solarize { p: p(self, 0, 0.2)?, threshold: p(self, 1, 0.5)? }))(),
                "noise" => (|| Some(Augment::Noise { std: p(self, 0, 0.1)?, p: p(self, 1, 0.5)? }))(),
                "blur" => (|| {
                    Some(Augment::Blur {
                        sigma: a[0].map_or(Some([1.0, 1.0]), |x| self.number_or_range(x, 0.0, 10.0))?,
                        p: p(self, 1, 0.5)?,
                    })
                })(),
                "multicrop" => (|| {
                    Some(Augment::Multicrop {
                        local: a[0].map_or(Some(2), |x| self.int(x, 0, 16))?,
                        scale: a[1].map_or(Some([0.1, 0.4]), |x| self.pair(x, 0.01, 1.0))?,
                        size: a[2].map_or(Some(14), |x| self.int(x, 4, 256))?,
                    })
                })(),
                _ => (|| {
                    Some(Augment::Cutmix {
                        alpha: a[0].map_or(Some(1.0), |x| self.float(x, 0.0, 100.0, false))?,
                        p: p(self, 1, 0.5)?,
                    })
                })(),
            };
            out.extend(aug);
        }
        Some(out)
    }

    /// The second view's list: as `augment`, without the batch-level `multicrop` and `cutmix` (which the first
    /// view's list sets for the pair).
    fn augment2(&mut self, e: &Expr) -> Option<Vec<Augment>> {
        let list = self.augment(e)?;
        let ExprKind::List(items) = &e.kind else { return Some(list) };
        let batch_level = items.iter().find(|i| match &i.kind {
            ExprKind::Call(f, _) => matches!(f.name.as_str(), "multicrop" | "cutmix"),
            ExprKind::Name(n) => matches!(n.as_str(), "multicrop" | "cutmix"),
            _ => false,
        });
        match batch_level {
            Some(item) => self.wrong(
                item,
                "`multicrop` and `cutmix` act on the pair, not on one view".into(),
                "put them in `augment`; `augment2` lists the second view's per-image augmentations",
            ),
            None => Some(list),
        }
    }

    fn form(&mut self, e: &Expr) -> Option<Form> {
        let c = self.ctor(e, "a form", &[("gradient", &[]), ("loss", &[])])?;
        Some(if c.name == "loss" { Form::Loss } else { Form::Gradient })
    }

    fn probe(&mut self, e: &Expr) -> Option<Probe> {
        let c = self.ctor(e, "a linear probe", &[("linear", &["grid"])])?;
        Some(Probe { grid: c.args[0].map_or(Some(1), |x| self.int(x, 1, 8))? })
    }

    fn eval(&mut self, e: &Expr) -> Option<Option<Knn>> {
        let c = self.ctor(e, "an evaluation", &[("knn", &["k", "t", "every"]), ("none", &[])])?;
        if c.name == "none" {
            return Some(None);
        }
        Some(Some(Knn {
            k: c.args[0].map_or(Some(200), |x| self.int(x, 1, 100_000))?,
            t: c.args[1].map_or(Some(0.1), |x| self.float(x, 1e-6, 100.0, false))?,
            every: c.args[2].map_or(Some(1), |x| self.int(x, 1, 1 << 20))?,
        }))
    }
}

/// The recipe in its own syntax, one field per line: what `explain` shows and `--set` accepts.
impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pair = |p: [f64; 2]| format!("[{}, {}]", p[0], p[1]);
        let mlp = |m: &Mlp| {
            let layers = if m.layers == 2 { String::new() } else { format!(", layers = {}", m.layers) };
            let last_bn = if m.last_bn { ", last_bn = true" } else { "" };
            format!("mlp(hidden = {}, out = {}{layers}{last_bn})", m.hidden, m.out)
        };
        let data = match &self.data {
            Data::FashionMnist => "fashion_mnist".to_string(),
            Data::FashionMnistDir(d) => format!("fashion_mnist({d:?})"),
            Data::Mnist(d) => format!("mnist({d:?})"),
            Data::Cifar10(d) => format!("cifar10({d:?})"),
            Data::Cifar100(d) => format!("cifar100({d:?})"),
            Data::Stl10(d) => format!("stl10({d:?})"),
            Data::ImageFolder { dir, size, skip_bad } => {
                format!("image_folder({dir:?}, size = {size}, skip_bad = {skip_bad})")
            }
        };
        let list = |v: &[f64]| format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
        let momentum = match &self.momentum {
            Momentum::None => "none".to_string(),
            Momentum::Constant(r) => format!("constant({r})"),
            Momentum::Cosine { base, end } => format!("cosine({base}, {end})"),
        };
        let optimizer = match &self.optimizer {
            Optimizer::Sgd { momentum, weight_decay, nesterov, .. } => {
                format!(
                    "sgd(lr = {}, momentum = {momentum}, weight_decay = {weight_decay}, nesterov = {nesterov})",
                    self.lr()
                )
            }
            Optimizer::Lars { momentum, weight_decay, eta, .. } => {
                format!("lars(lr = {}, momentum = {momentum}, weight_decay = {weight_decay}, eta = {eta})", self.lr())
            }
            Optimizer::Adamw { beta1, beta2, weight_decay, .. } => {
                format!("adamw(lr = {}, beta1 = {beta1}, beta2 = {beta2}, weight_decay = {weight_decay})", self.lr())
            }
        };
        let schedule = match &self.schedule {
            Schedule::WarmupCosine { warmup_epochs } => format!("warmup_cosine(warmup_epochs = {warmup_epochs})"),
            Schedule::Constant => "constant".to_string(),
        };
        let augment_list = |augment: &[Augment]| -> String {
            let items: Vec<String> = augment
                .iter()
                .map(|a| match a {
                    Augment::Crop { scale, ratio } => {
                        format!("crop(scale = {}, ratio = {})", pair(*scale), pair(*ratio))
                    }
                    Augment::Hflip { p } => format!("hflip({p})"),
                    Augment::Jitter { brightness, contrast, p, saturation, hue } => {
                        let colour = if *saturation > 0.0 || *hue > 0.0 {
                            format!(", saturation = {saturation}, hue = {hue}")
                        } else {
                            String::new()
                        };
                        format!("jitter(brightness = {brightness}, contrast = {contrast}{colour}, p = {p})")
                    }
                    Augment::Grayscale { p } => format!("grayscale({p})"),
                    Augment::Solarize { p, threshold } => format!("solarize(p = {p}, threshold = {threshold})"),
                    Augment::Noise { std, p } => format!("noise(std = {std}, p = {p})"),
                    Augment::Blur { sigma: [lo, hi], p } if lo == hi => format!("blur(sigma = {lo}, p = {p})"),
                    Augment::Blur { sigma, p } => format!("blur(sigma = {}, p = {p})", pair(*sigma)),
                    Augment::Multicrop { local, scale, size } => {
                        format!("multicrop(local = {local}, scale = {}, size = {size})", pair(*scale))
                    }
                    Augment::Cutmix { alpha, p } => format!("cutmix(alpha = {alpha}, p = {p})"),
                })
                .collect();
            format!("[{}]", items.join(", "))
        };
        let eval = match &self.eval {
            Some(k) => format!("knn(k = {}, t = {}, every = {})", k.k, k.t, k.every),
            None => "none".to_string(),
        };
        writeln!(f, "data       = {data}")?;
        writeln!(f, "encoder    = {}", self.encoder)?;
        writeln!(f, "projector  = {}", mlp(&self.projector))?;
        writeln!(
            f,
            "predictor  = {}",
            self.predictor.as_ref().map_or("none".to_string(), |p| format!("mlp(hidden = {})", p.hidden))
        )?;
        writeln!(f, "momentum   = {momentum}")?;
        writeln!(f, "batch      = {}", self.batch)?;
        writeln!(f, "epochs     = {}", self.epochs)?;
        writeln!(f, "seed       = {}", self.seed)?;
        writeln!(f, "optimizer  = {optimizer}")?;
        writeln!(f, "schedule   = {schedule}")?;
        writeln!(f, "augment    = {}", augment_list(&self.augment))?;
        if let Some(second) = &self.augment2 {
            writeln!(f, "augment2   = {}", augment_list(second))?;
        }
        writeln!(f, "eval       = {eval}")?;
        if !self.probe.is_global() {
            writeln!(f, "probe      = linear(grid = {})", self.probe.grid)?;
        }
        writeln!(f, "checkpoint = {}", self.checkpoint)?;
        if self.form == Form::Loss {
            writeln!(f, "form       = loss")?;
        }
        match &self.normalize {
            Normalize::Dataset => {}
            Normalize::None => writeln!(f, "normalize  = none")?,
            Normalize::MeanStd { mean, std } => {
                writeln!(f, "normalize  = mean_std(mean = {}, std = {})", list(mean), list(std))?
            }
        }
        if self.sync_bn {
            writeln!(f, "sync_bn    = true")?;
        }
        Ok(())
    }
}
