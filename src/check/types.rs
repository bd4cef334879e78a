//! The types of the objective language. Every vector has length D, every matrix is D × D, so a
//! type plus a set's symbolic size is the whole shape.

use std::fmt;

/// A set's size, symbolic in the batch size: `per_n · N + fixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Multiple of N.
    pub per_n: usize,
    /// Constant part (list literals, fifo capacities).
    pub fixed: usize,
}

impl Size {
    /// The size at a concrete batch size.
    pub fn at(self, n: usize) -> usize {
        self.per_n * n + self.fixed
    }
}

impl std::ops::Add for Size {
    type Output = Size;
    fn add(self, o: Size) -> Size {
        Size { per_n: self.per_n + o.per_n, fixed: self.fixed + o.fixed }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.per_n, self.fixed) {
            (0, k) => write!(f, "{k}"),
            (1, 0) => write!(f, "N"),
            (p, 0) => write!(f, "{p}N"),
            (1, k) => write!(f, "N + {k}"),
            (p, k) => write!(f, "{p}N + {k}"),
        }
    }
}

/// What a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// Feature vectors.
    Vec,
    /// Batch samples (with fields `u1 u2 t1 t2`).
    Sample,
}

/// A type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// A real number.
    Scalar,
    /// A D-vector.
    Vec,
    /// A D × D matrix.
    Mat,
    /// A set of vectors or samples.
    Set(Elem, Size),
    /// One batch sample.
    Sample,
    /// `true` / `false` (only `symmetric`).
    Bool,
    /// A string (recipe values only).
    Str,
    /// The type of something already reported as wrong; accepted everywhere to avoid cascades.
    Error,
}

impl Type {
    /// Whether the type is one of the tensor types that arithmetic applies to.
    pub fn is_numeric(self) -> bool {
        matches!(self, Type::Scalar | Type::Vec | Type::Mat)
    }

    /// Shape of one value, per sample.
    pub fn shape(self) -> String {
        match self {
            Type::Scalar => "[]".into(),
            Type::Vec => "[D]".into(),
            Type::Mat => "[D, D]".into(),
            Type::Set(Elem::Vec, size) => format!("[{size}, D]"),
            Type::Set(Elem::Sample, size) => format!("[{size}] samples"),
            _ => "-".into(),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Scalar => f.write_str("scalar"),
            Type::Vec => f.write_str("vec"),
            Type::Mat => f.write_str("mat"),
            Type::Set(Elem::Vec, size) => write!(f, "set of {size} vec"),
            Type::Set(Elem::Sample, size) => write!(f, "set of {size} sample"),
            Type::Sample => f.write_str("sample"),
            Type::Bool => f.write_str("bool"),
            Type::Str => f.write_str("string"),
            Type::Error => f.write_str("?"),
        }
    }
}
