//! A tiny built-in bitmap font for burning the publisher's label and the
//! media clock into the test picture.
//!
//! Glyphs are 5 pixels wide and 9 tall: rows 0..=6 hold capitals, digits and
//! ascenders, rows 2..=6 the lowercase x-height, rows 7..=8 descenders. Each
//! row is one byte with the leftmost pixel in bit 4. The font is drawn as art
//! below (`#` = ink) and packed at compile time, so a glyph can be read and
//! fixed by eye instead of by decoding hex.
//!
//! Covered: `0-9`, `A-Z`, `a-z`, `_ - . :` and space. Anything else renders as
//! [`UNKNOWN`], a hollow box, so an unsupported character in a label is
//! visibly "something" rather than silently dropped.

/// Glyph width in font pixels.
pub(crate) const GLYPH_W: u32 = 5;
/// Glyph height in font pixels (including the descender rows).
pub(crate) const GLYPH_H: u32 = 9;
/// Horizontal advance per character, in font pixels (glyph + 1 column gap).
pub(crate) const ADVANCE: u32 = GLYPH_W + 1;

/// One glyph: 9 rows, leftmost pixel in bit 4.
pub(crate) type Glyph = [u8; GLYPH_H as usize];

/// Drawn for characters the font does not cover.
pub(crate) const UNKNOWN: Glyph = g([
    "#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####", ".....", ".....",
]);

/// Packs glyph art into bit rows. Rows shorter than 9 are padded with blank
/// rows, which keeps the table below free of trailing "....." noise.
const fn g<const N: usize>(rows: [&str; N]) -> Glyph {
    let mut out = [0u8; GLYPH_H as usize];
    let mut r = 0;
    while r < N {
        let bytes = rows[r].as_bytes();
        let mut bits = 0u8;
        let mut c = 0;
        while c < bytes.len() {
            bits <<= 1;
            if bytes[c] == b'#' {
                bits |= 1;
            }
            c += 1;
        }
        out[r] = bits;
        r += 1;
    }
    out
}

/// The font, as (character, glyph) pairs. Kept as a list rather than an
/// indexed table so the art stays next to its character; [`ASCII`] is the
/// indexed form built from it at compile time.
pub(crate) const FONT: &[(u8, Glyph)] = &[
    (
        b' ',
        g([
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ]),
    ),
    (
        b'0',
        g([
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ]),
    ),
    (
        b'1',
        g([
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ]),
    ),
    (
        b'2',
        g([
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ]),
    ),
    (
        b'3',
        g([
            "#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.",
        ]),
    ),
    (
        b'4',
        g([
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ]),
    ),
    (
        b'5',
        g([
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ]),
    ),
    (
        b'6',
        g([
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ]),
    ),
    (
        b'7',
        g([
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ]),
    ),
    (
        b'8',
        g([
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ]),
    ),
    (
        b'9',
        g([
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ]),
    ),
    (
        b'A',
        g([
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ]),
    ),
    (
        b'B',
        g([
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ]),
    ),
    (
        b'C',
        g([
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ]),
    ),
    (
        b'D',
        g([
            "###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..",
        ]),
    ),
    (
        b'E',
        g([
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ]),
    ),
    (
        b'F',
        g([
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ]),
    ),
    (
        b'G',
        g([
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ]),
    ),
    (
        b'H',
        g([
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ]),
    ),
    (
        b'I',
        g([
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ]),
    ),
    (
        b'J',
        g([
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ]),
    ),
    (
        b'K',
        g([
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ]),
    ),
    (
        b'L',
        g([
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ]),
    ),
    (
        b'M',
        g([
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ]),
    ),
    (
        b'N',
        g([
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ]),
    ),
    (
        b'O',
        g([
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ]),
    ),
    (
        b'P',
        g([
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ]),
    ),
    (
        b'Q',
        g([
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ]),
    ),
    (
        b'R',
        g([
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ]),
    ),
    (
        b'S',
        g([
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ]),
    ),
    (
        b'T',
        g([
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ]),
    ),
    (
        b'U',
        g([
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ]),
    ),
    (
        b'V',
        g([
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ]),
    ),
    (
        b'W',
        g([
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ]),
    ),
    (
        b'X',
        g([
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ]),
    ),
    (
        b'Y',
        g([
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ]),
    ),
    (
        b'Z',
        g([
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ]),
    ),
    (
        b'a',
        g([
            ".....", ".....", ".###.", "....#", ".####", "#...#", ".####",
        ]),
    ),
    (
        b'b',
        g([
            "#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####.",
        ]),
    ),
    (
        b'c',
        g([
            ".....", ".....", ".###.", "#....", "#....", "#...#", ".###.",
        ]),
    ),
    (
        b'd',
        g([
            "....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####",
        ]),
    ),
    (
        b'e',
        g([
            ".....", ".....", ".###.", "#...#", "#####", "#....", ".###.",
        ]),
    ),
    (
        b'f',
        g([
            "..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#...",
        ]),
    ),
    (
        b'g',
        g([
            ".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", ".###.",
        ]),
    ),
    (
        b'h',
        g([
            "#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#",
        ]),
    ),
    (
        b'i',
        g([
            "..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###.",
        ]),
    ),
    (
        b'j',
        g([
            "...#.", ".....", "..##.", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ]),
    ),
    (
        b'k',
        g([
            "#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#.",
        ]),
    ),
    (
        b'l',
        g([
            ".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ]),
    ),
    (
        b'm',
        g([
            ".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#",
        ]),
    ),
    (
        b'n',
        g([
            ".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#",
        ]),
    ),
    (
        b'o',
        g([
            ".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###.",
        ]),
    ),
    (
        b'p',
        g([
            ".....", ".....", "#.##.", "##..#", "#...#", "#...#", "####.", "#....", "#....",
        ]),
    ),
    (
        b'q',
        g([
            ".....", ".....", ".##.#", "#..##", "#...#", "#...#", ".####", "....#", "....#",
        ]),
    ),
    (
        b'r',
        g([
            ".....", ".....", "#.##.", "##..#", "#....", "#....", "#....",
        ]),
    ),
    (
        b's',
        g([
            ".....", ".....", ".####", "#....", ".###.", "....#", "####.",
        ]),
    ),
    (
        b't',
        g([
            ".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##.",
        ]),
    ),
    (
        b'u',
        g([
            ".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#",
        ]),
    ),
    (
        b'v',
        g([
            ".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ]),
    ),
    (
        b'w',
        g([
            ".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#.",
        ]),
    ),
    (
        b'x',
        g([
            ".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#",
        ]),
    ),
    (
        b'y',
        g([
            ".....", ".....", "#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###.",
        ]),
    ),
    (
        b'z',
        g([
            ".....", ".....", "#####", "...#.", "..#..", ".#...", "#####",
        ]),
    ),
    (
        b'_',
        g([
            ".....", ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ]),
    ),
    (
        b'-',
        g([
            ".....", ".....", ".....", ".###.", ".....", ".....", ".....",
        ]),
    ),
    (
        b'.',
        g([
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..",
        ]),
    ),
    (
        b':',
        g([
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....",
        ]),
    ),
];

/// [`FONT`] indexed by ASCII code; `None` where the font has no glyph.
const ASCII: [Option<Glyph>; 128] = {
    let mut table = [None; 128];
    let mut i = 0;
    while i < FONT.len() {
        table[FONT[i].0 as usize] = Some(FONT[i].1);
        i += 1;
    }
    table
};

/// The glyph for `c`, or [`UNKNOWN`] if the font does not cover it.
pub(crate) fn glyph(c: char) -> Glyph {
    let code = c as u32;
    if code < 128 {
        if let Some(glyph) = ASCII[code as usize] {
            return glyph;
        }
    }
    UNKNOWN
}

/// Whether font pixel (`col`, `row`) of `glyph` is ink. Out-of-range
/// coordinates are blank, so callers may probe the spacing column.
#[inline]
pub(crate) fn ink(glyph: &Glyph, col: u32, row: u32) -> bool {
    col < GLYPH_W && row < GLYPH_H && (glyph[row as usize] >> (GLYPH_W - 1 - col)) & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_digit_renders_differently() {
        let digits: HashSet<Glyph> = ('0'..='9').map(glyph).collect();
        assert_eq!(digits.len(), 10, "two digits share a bitmap");
        assert!(!digits.contains(&UNKNOWN), "a digit fell back to the box");
    }

    #[test]
    fn every_covered_character_is_distinct_and_not_the_box() {
        let mut seen = HashSet::new();
        let required = ('0'..='9')
            .chain('A'..='Z')
            .chain('a'..='z')
            .chain("_-.: ".chars());
        for c in required {
            let gl = glyph(c);
            assert_ne!(gl, UNKNOWN, "{c:?} has no glyph");
            assert!(seen.insert(gl), "{c:?} looks like another character");
        }
        // Only the space is blank; every other glyph has ink.
        for (c, gl) in FONT {
            assert_eq!(gl.iter().all(|r| *r == 0), *c == b' ', "{:?}", *c as char);
            assert!(gl.iter().all(|r| *r < 32), "{:?} wider than 5", *c as char);
        }
    }

    #[test]
    fn unknown_characters_draw_a_box() {
        assert_eq!(glyph('é'), UNKNOWN);
        assert_eq!(glyph('#'), UNKNOWN);
        assert!(ink(&UNKNOWN, 0, 0) && ink(&UNKNOWN, 4, 6) && !ink(&UNKNOWN, 2, 3));
        assert!(!ink(&UNKNOWN, 5, 0), "the spacing column is blank");
    }
}
