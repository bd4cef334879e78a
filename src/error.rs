//! Runtime errors as data, like the compiler's diagnostics: a stable code from one table, a message saying what is
//! wrong and where, and a help line saying how to fix it. Each part of the runtime keeps its own typed error enum
//! (whose `Display` is the message alone) and converts it into an [`Error`]; only the edge (`crate::render`, called
//! from `commands`) draws it, as human text or JSON, and [`Error::exit_code`] decides the exit status from the code.

use crate::code_table::code_table;
use std::fmt;

/// What a code's failure means for the exit status: decided here, once, for every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The input is wrong — a file, setting, data set or run directory the user gave: exit 1.
    Input,
    /// Usage or the environment — arguments, a missing path, a device, the file system: exit 2.
    Usage,
    /// Not a failure: the command goes on (printed as a warning).
    Warning,
}

code_table! {
    /// Every runtime error ssl-lang can report. Codes are stable: tools and users may match on them.
    ErrorCode, class: Class, {
    SourceRead      = "ssl::cli::read",             Usage,   "a source file that cannot be read";
    NoObjective     = "ssl::cli::objective",        Usage,   "--objective names no objective of the file";
    SetForm         = "ssl::set::form",             Usage,   "a --set without `=`";
    SetParam        = "ssl::set::param",            Usage,   "a --set of an objective param that does not exist or is out of range";
    DeviceName      = "ssl::device::name",          Usage,   "a --device that is not cpu, cuda or cuda:N";
    DeviceNotBuilt  = "ssl::device::not_built",     Usage,   "a CUDA device asked of a build without the cuda feature";
    DeviceUnavailable = "ssl::device::unavailable", Usage,   "a CUDA device that cannot be opened";
    DataMissing     = "ssl::data::missing",         Usage,   "a data file that does not exist";
    DataRead        = "ssl::data::read",            Usage,   "a data file that cannot be read";
    DataTruncated   = "ssl::data::truncated",       Input,   "a data file shorter than its header announces";
    DataTrailing    = "ssl::data::trailing",        Input,   "a data file longer than its header announces";
    DataMagic       = "ssl::data::magic",           Input,   "a data file with the wrong IDX magic number";
    DataDims        = "ssl::data::dims",            Input,   "images of a shape ssl-lang does not read";
    DataCount       = "ssl::data::count",           Input,   "image and label files with different sample counts";
    DataLabel       = "ssl::data::label",           Input,   "a label outside the data set's classes";
    DataWrite       = "ssl::data::write",           Usage,   "a data file that cannot be written";
    DataShape       = "ssl::data::shape",           Input,   "a batch or augmentation parameter of the wrong shape";
    DataRecords     = "ssl::data::records",         Input,   "a binary data file that is not a whole number of records";
    DataDecode      = "ssl::data::decode",          Input,   "an image file that cannot be decoded";
    DataLayout      = "ssl::data::layout",          Input,   "an image folder that is not a data set ssl-lang reads";
    DataUnlabelled  = "ssl::data::unlabelled",      Usage,   "an evaluation of data without labels";
    DataNorm        = "ssl::data::norm",            Input,   "a normalisation that does not match the images' channels";
    EvalShape       = "ssl::eval::shape",           Input,   "features and labels that do not fit together";
    EvalCache       = "ssl::eval::cache",           Warning, "features that could not be cached (a read-only run)";
    EvalEmpty       = "ssl::eval::empty",           Input,   "an evaluation with nothing to compare or a degenerate setting";
    EvalData        = "ssl::eval::data",            Warning, "an evaluation on other data than the run trained on";
    GradRead        = "ssl::grad::read",            Input,    "grad inputs that are not a readable safetensors file";
    GradMissing     = "ssl::grad::missing",         Input,   "grad inputs without one of u1 u2 t1 t2";
    GradShape       = "ssl::grad::shape",           Input,   "a grad input of the wrong shape";
    GradUnknown     = "ssl::grad::unknown",         Input,   "a grad input that is neither a feature nor a state";
    GradNonFinite   = "ssl::grad::nonfinite",       Input,   "a grad input holding a NaN or infinity";
    GradWrite       = "ssl::grad::write",           Usage,   "grad results that cannot be written";
    RunExists       = "ssl::run::exists",           Usage,   "a new run in a directory that already holds one";
    RunMissing      = "ssl::run::missing",          Usage,   "no run where one was expected";
    RunBusy         = "ssl::run::busy",             Usage,   "a run another ssl-lang process is writing now";
    RunMismatch     = "ssl::run::mismatch",         Input,   "a resume whose objective, recipe or data differ from the run's";
    RunUnclean      = "ssl::run::unclean",          Warning, "a run whose last training ended without releasing its lock";
    RunFallback     = "ssl::run::fallback",         Warning, "a damaged latest checkpoint, skipped for the previous one";
    RunName         = "ssl::run::name",             Usage,   "a run name that is not one directory name";
    RunIo           = "ssl::run::io",               Usage,   "the file system refused a read or write of the run directory";
    RunCorrupt      = "ssl::run::corrupt",          Input,   "a file of the run directory that cannot be understood";
    RunFormat       = "ssl::run::format",           Input,   "a run directory written by another version of ssl-lang";
    RunNoCheckpoint = "ssl::run::no_checkpoint",    Input,   "a run with no checkpoint to resume or evaluate";
    RunStale        = "ssl::run::stale",            Input,   "a run whose saved objective no longer checks";
    RunPlot         = "ssl::run::plot",             Usage,   "a plot that cannot be rendered";
    TrainConfig     = "ssl::train::config",         Input,   "a recipe setting that cannot work with the data";
    TrainForm       = "ssl::train::form",           Input,   "a form (gradient or loss) the objective cannot train in";
    TrainMemory     = "ssl::train::memory",         Input,   "a step too large for the memory available";
    TrainNonFinite  = "ssl::train::nonfinite",      Input,   "a NaN or infinity in training";
    TrainCollapse   = "ssl::train::collapse",       Warning, "the online features stay collapsed";
    RanksUnavailable = "ssl::ranks::unavailable",   Usage,   "a run started by an MPI launcher in a build without MPI";
    RanksMismatch   = "ssl::ranks::mismatch",       Usage,   "a number of ranks that does not fit the job or the batch";
    RanksLost       = "ssl::ranks::lost",           Usage,   "a rank that left the job (it failed or died) while the others wait for it";
    RanksDiverged   = "ssl::ranks::diverged",       Input,   "ranks whose weights differ after a step (they must stay identical)";
    BenchRun        = "ssl::bench::run",            Usage,   "a benchmark's training run failed";
    ExportFormat    = "ssl::export::format",        Input,   "an export to a format without the run's backbone (torchvision has no resnet_mini)";
    ExportWrite     = "ssl::export::write",         Usage,   "an exported file that cannot be written";
    SweepGrid       = "ssl::sweep::grid",           Usage,   "a --grid that is not KEY=V1,V2,...";
    SweepCell       = "ssl::sweep::cell",           Warning, "a cell of a sweep that failed (the others go on; its log says why)";
    Tensor          = "ssl::tensor",                Input,   "a tensor operation failed (out of memory, or a bug to report)";
    }
}

/// One runtime error: its code, what is wrong and where, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Stable code; also decides the exit status.
    pub code: ErrorCode,
    /// One or two sentences saying what is wrong, naming the file, field or step.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Error {
    /// An error without help.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), help: None }
    }

    /// Adds a help line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The process exit status for this error: 1 when the input is wrong, 2 for usage and I/O, 0 for a warning.
    pub fn exit_code(&self) -> u8 {
        match self.code.class() {
            Class::Input => 1,
            Class::Usage => 2,
            Class::Warning => 0,
        }
    }
}

/// The message alone; `crate::render` draws the code and help.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        // candle appends a backtrace when RUST_BACKTRACE is set: the first line is the reason.
        let reason = e.to_string().lines().next().unwrap_or_default().to_string();
        Error::new(ErrorCode::Tensor, reason).help(
            "usually out of memory (try a smaller `--set batch=...`); otherwise a bug: report it with the command",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
        }
    }
}
