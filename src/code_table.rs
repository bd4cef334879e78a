//! The one shape of a table of stable codes, shared by the compiler's diagnostics and the runtime's errors: each row
//! is a variant, its textual code, a value of the table's column (severity or exit class) and a one-line summary.

/// Defines `$name` with `ALL`, `as_str`, the column's accessor `$column` and `summary`.
macro_rules! code_table {
    ($(#[$meta:meta])* $name:ident, $column:ident: $ty:ident, { $($variant:ident = $code:literal, $value:ident, $summary:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( #[doc = $summary] $variant, )* }

        impl $name {
            /// All codes, for documentation and for the tests that prove each one is produced.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The stable textual code, e.g. `ssl::name::unknown`.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $code,)* }
            }

            #[doc = concat!("The code's ", stringify!($column), ".")]
            pub fn $column(self) -> $ty {
                match self { $($name::$variant => $ty::$value,)* }
            }

            /// One line on what the code means.
            pub fn summary(self) -> &'static str {
                match self { $($name::$variant => $summary,)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use code_table;
