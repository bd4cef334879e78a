//! A linear pre-scan of the source, before the grammar sees it: it splits the file into top-level
//! blocks (so a syntax error in one block does not hide the errors of the others) and rejects
//! bracket nesting beyond [`MAX_NESTING`], which a recursive-descent parser could not survive.

use crate::diagnostic::{Code, Diagnostic, Span};

/// The deepest bracket nesting (`(`, `[`, `{`) accepted; real objectives use fewer than ten.
pub const MAX_NESTING: usize = 64;

/// One top-level block of the file, ready for the grammar.
pub struct Block {
    /// The block's byte range in the file.
    pub span: Span,
    /// Whether it nests too deep to be parsed (already reported).
    pub too_deep: bool,
}

/// Splits `source` into blocks at the top-level keywords `objective` and `train`, and reports
/// over-deep nesting. A block with a nesting error is marked, not to be parsed; the others are not
/// affected.
pub fn scan(source: &str) -> (Vec<Block>, Vec<Diagnostic>) {
    let bytes = source.as_bytes();
    let mut starts = Vec::new();
    let mut too_deep: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => i = skip_line(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = skip_line(bytes, i),
            b'"' => i = skip_string(bytes, i),
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth == MAX_NESTING + 1 {
                    too_deep.push(i);
                }
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = skip_word(bytes, i);
                let word = &source[i..end];
                if depth == 0 && (word == "objective" || word == "train") {
                    starts.push(i);
                }
                i = end;
            }
            _ => i += 1,
        }
    }

    // Text before the first block (if not blank) is a block of its own, so the grammar reports it.
    let first = starts.first().copied().unwrap_or(bytes.len());
    if !is_blank(&source[..first]) {
        starts.insert(0, 0);
    }
    let blocks: Vec<Block> = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let span = Span::new(start, starts.get(k + 1).copied().unwrap_or(bytes.len()));
            Block { span, too_deep: too_deep.iter().any(|&at| span.start <= at && at < span.end) }
        })
        .collect();

    let diagnostics = too_deep
        .iter()
        .map(|&at| {
            Diagnostic::new(
                Code::TooDeep,
                format!("brackets nest more than {MAX_NESTING} levels deep"),
                Span::new(at, at + 1),
                format!("level {} opens here", MAX_NESTING + 1),
            )
            .help("split the expression into `let` declarations")
        })
        .collect();
    (blocks, diagnostics)
}

/// Whether the text holds only whitespace and comments.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with("//")
    })
}

fn skip_line(bytes: &[u8], i: usize) -> usize {
    bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| i + p)
}

fn skip_string(bytes: &[u8], i: usize) -> usize {
    match bytes[i + 1..].iter().position(|&b| b == b'"' || b == b'\n') {
        Some(p) => i + 1 + p + 1,
        None => bytes.len(),
    }
}

fn skip_word(bytes: &[u8], i: usize) -> usize {
    bytes[i..].iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'_')).map_or(bytes.len(), |p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_keywords_only() {
        let src = "# c\nobjective a { x = train }\ntrain a { }";
        let (blocks, diags) = scan(src);
        assert!(diags.is_empty());
        let texts: Vec<&str> = blocks.iter().map(|b| &src[b.span.start..b.span.end]).collect();
        assert_eq!(texts, ["objective a { x = train }\n", "train a { }"]);
    }

    #[test]
    fn keeps_leading_junk_as_a_block() {
        let (blocks, _) = scan("junk objective a {}");
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].span, Span::new(0, 5));
    }

    #[test]
    fn rejects_deep_nesting_once_per_run() {
        let src = format!("objective a {{ positive = {}u1{} }}", "(".repeat(100), ")".repeat(100));
        let (blocks, diags) = scan(&src);
        assert!(blocks.iter().all(|b| b.too_deep));
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].code, Code::TooDeep);
        // The brace of the block is level 1, so level 65 is the 64th parenthesis.
        assert_eq!(diags[0].span().start, "objective a { positive = ".len() + 63);
    }
}
