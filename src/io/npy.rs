//! Numpy `.npy` data, written ([`encode`]) and read, checked before anything is allocated: the header is parsed here
//! (format versions 1–3), the declared shape's byte count is computed with checked arithmetic and
//! compared with the bytes the file (or the `.npz` entry) really holds and with the memory budget
//! ([`crate::budget`]); only then are the data read, and only as far as they exist.
//!
//! Format (numpy's `format.py`, "NPY format version 1.0–3.0"): the magic `\x93NUMPY`, a major
//! and minor version byte, the header length (u16 little-endian in version 1, u32 in 2 and 3),
//! then an ASCII (UTF-8 in 3) Python dict literal `{'descr': '<f4', 'fortran_order': False,
//! 'shape': (3, 4), }` padded with spaces and a newline, then the raw data.

use crate::budget::{element_count, Estimate};
use num_complex::Complex;
use std::io::Read;

/// The largest header this reader accepts (numpy writes under 100 bytes for any ordinary array;
/// version 2 allows 4 GiB, which no real header needs).
const MAX_HEADER: usize = 1 << 20;

/// An element type that can be decoded from `.npy` data.
pub trait NpyElement: Copy + Send + Sync + 'static {
    /// The numpy type name for messages (`"float32"`).
    const NAME: &'static str;
    /// The type's kind and size as in a numpy `descr` without the byte order (`"f4"`).
    const CODE: &'static str;
    /// Decodes one element from `size_of::<Self>()` little-endian bytes.
    fn from_le(bytes: &[u8]) -> Self;
    /// Appends the element's little-endian bytes.
    fn push_le(self, out: &mut Vec<u8>);
}

macro_rules! npy_element {
    ($t:ty, $name:literal, $code:literal) => {
        impl NpyElement for $t {
            const NAME: &'static str = $name;
            const CODE: &'static str = $code;
            fn from_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element-sized chunk"))
            }
            fn push_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
npy_element!(f32, "float32", "f4");
npy_element!(f64, "float64", "f8");
npy_element!(i64, "int64", "i8");
npy_element!(i32, "int32", "i4");

impl NpyElement for Complex<f32> {
    const NAME: &'static str = "complex64";
    const CODE: &'static str = "c8";
    fn from_le(b: &[u8]) -> Self {
        Complex::new(f32::from_le(&b[..4]), f32::from_le(&b[4..]))
    }
    fn push_le(self, out: &mut Vec<u8>) {
        self.re.push_le(out);
        self.im.push_le(out);
    }
}

impl NpyElement for Complex<f64> {
    const NAME: &'static str = "complex128";
    const CODE: &'static str = "c16";
    fn from_le(b: &[u8]) -> Self {
        Complex::new(f64::from_le(&b[..8]), f64::from_le(&b[8..]))
    }
    fn push_le(self, out: &mut Vec<u8>) {
        self.re.push_le(out);
        self.im.push_le(out);
    }
}

/// The `.npy` file image of `a` (format version 1.0, as `numpy.save` writes it): little-endian,
/// C order (a view in any layout is written in its logical order), the header padded with spaces
/// so that the data start at a multiple of 64 bytes.
///
/// # Panics
/// Never for real arrays: a header over 64 KiB would need a shape of thousands of dimensions,
/// which ndarray cannot create.
pub fn encode<A: NpyElement, S: ndarray::Data<Elem = A>, D: ndarray::Dimension>(
    a: &ndarray::ArrayBase<S, D>,
) -> Vec<u8> {
    let shape = match a.shape() {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<{}', 'fortran_order': False, 'shape': {shape}, }}", A::CODE).into_bytes();
    // magic (6) + version (2) + length (2) + header + newline: a multiple of 64
    header.resize((10 + header.len() + 1).next_multiple_of(64) - 10 - 1, b' ');
    header.push(b'\n');
    let len = u16::try_from(header.len()).expect("a header under 64 KiB");
    let mut out = Vec::with_capacity(10 + header.len() + a.len() * std::mem::size_of::<A>());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&header);
    for &x in a.iter() {
        x.push_le(&mut out);
    }
    out
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// The type code without its byte order (`"f4"`, `"i8"`, `"c16"`).
    pub code: String,
    /// Whether the data are big-endian (`>`).
    pub big_endian: bool,
    /// Column-major data.
    pub fortran_order: bool,
    /// The declared shape.
    pub shape: Vec<usize>,
    /// Bytes before the data (magic, version, length, dict).
    pub header_bytes: usize,
}

impl NpyHeader {
    /// The element size of the declared type in bytes (from the digits of the code).
    pub fn element_size(&self) -> Option<usize> {
        self.code.get(1..)?.parse().ok().filter(|&s: &usize| (1..=16).contains(&s))
    }

    /// The bytes of data the header declares (`None`: more than 2^64, or an unknown size).
    pub fn data_bytes(&self) -> Option<u64> {
        let n = element_count(&self.shape)? as u64;
        n.checked_mul(self.element_size()? as u64)
    }
}

/// Reads and parses the header from `r`.
///
/// # Errors
/// A message (the caller names the file): not a `.npy` stream, an unsupported version, a header
/// over 1 MiB or not a valid dict.
pub fn read_header(r: &mut impl Read) -> std::result::Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|e| format!("not a .npy array (no header: {e})"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (the magic \\x93NUMPY is missing)".into());
    }
    let (len_bytes, prefix) = match pre[6] {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(format!("unsupported .npy format version {v}.{} (expected 1, 2 or 3)", pre[7])),
    };
    let mut lb = [0u8; 4];
    r.read_exact(&mut lb[..len_bytes]).map_err(|e| format!("truncated .npy header: {e}"))?;
    let len = u32::from_le_bytes(lb) as usize;
    if len > MAX_HEADER {
        return Err(format!("a .npy header of {len} bytes (at most {MAX_HEADER} accepted)"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(|e| format!("truncated .npy header: {e}"))?;
    let text = std::str::from_utf8(&text).map_err(|_| "the .npy header is not text".to_string())?;
    let mut h = parse_dict(text)?;
    h.header_bytes = prefix + len;
    Ok(h)
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_dict(text: &str) -> std::result::Result<NpyHeader, String> {
    let bad = |what: &str| format!("invalid .npy header ({what}): {}", text.trim_end());
    let t = text.trim();
    let inner = t.strip_prefix('{').and_then(|s| s.strip_suffix('}')).ok_or_else(|| bad("not a dict"))?;
    let value_of = |key: &str| -> std::result::Result<&str, String> {
        let start = inner.find(&format!("'{key}'")).ok_or_else(|| bad(&format!("no '{key}'")))?;
        let rest = inner[start + key.len() + 2..].trim_start();
        rest.strip_prefix(':').map(str::trim_start).ok_or_else(|| bad(&format!("no ':' after '{key}'")))
    };
    let descr = value_of("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|s| s.split('\'').next()).ok_or_else(|| bad("descr"))?;
    let (order, code) = descr.split_at(descr.len().min(1));
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(bad("descr byte order")),
    };
    let fortran = value_of("fortran_order")?;
    let fortran_order = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return Err(bad("fortran_order"));
    };
    let shape = value_of("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| bad("shape"))?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<usize>().map_err(|_| bad("shape")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if shape.len() > 32 {
        return Err(bad("more than 32 dimensions"));
    }
    Ok(NpyHeader { code: code.to_string(), big_endian, fortran_order, shape, header_bytes: 0 })
}

/// Reads the data of an array whose header was just read from `r`: checks that the declared
/// type is `A`'s, that the declared bytes fit in `available` (what the file or entry holds after
/// the header) and in the memory budget, then reads exactly that many bytes.
///
/// # Errors
/// A message naming the mismatch; a budget error's message.
pub fn read_data<A: NpyElement>(
    r: &mut impl Read,
    h: &NpyHeader,
    available: u64,
    what: &str,
) -> std::result::Result<ndarray::ArrayD<A>, String> {
    if h.code != A::CODE {
        return Err(format!("holds {} data (descr '{}'), expected {}", descr_name(&h.code), h.code, A::NAME));
    }
    let declared = h.data_bytes();
    match declared {
        Some(b) if b <= available => {}
        _ => {
            let b = declared.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string());
            return Err(format!(
                "the header declares shape {:?} ({b} bytes of {}) but only {available} bytes follow it",
                h.shape,
                A::NAME
            ));
        }
    }
    let bytes = declared.expect("checked above");
    Estimate::new(format!("{what} of shape {:?}", h.shape)).bytes(bytes).check().map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    r.take(bytes).read_to_end(&mut data).map_err(|e| format!("cannot read the data: {e}"))?;
    if data.len() as u64 != bytes {
        return Err(format!("truncated data: {} of {bytes} bytes", data.len()));
    }
    let size = std::mem::size_of::<A>();
    let values: Vec<A> = if h.big_endian {
        // complex values swap each part, not the pair
        let part = if A::CODE.starts_with('c') { size / 2 } else { size };
        data.chunks_exact(size)
            .map(|c| {
                let mut le = c.to_vec();
                le.chunks_exact_mut(part).for_each(<[u8]>::reverse);
                A::from_le(&le)
            })
            .collect()
    } else {
        data.chunks_exact(size).map(A::from_le).collect()
    };
    use ndarray::ShapeBuilder;
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&h.shape).set_f(h.fortran_order), values)
        .map_err(|e| format!("shape {:?}: {e}", h.shape))
}

/// A readable name for a `descr` code.
fn descr_name(code: &str) -> String {
    match code {
        "f2" => "float16".into(),
        "f4" => "float32".into(),
        "f8" => "float64".into(),
        "i1" | "i2" | "i4" | "i8" => format!("int{}", 8 * code[1..].parse::<usize>().unwrap_or(0)),
        "u1" | "u2" | "u4" | "u8" => format!("uint{}", 8 * code[1..].parse::<usize>().unwrap_or(0)),
        "c8" => "complex64".into(),
        "c16" => "complex128".into(),
        "b1" => "bool".into(),
        other => format!("'{other}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        let mut header = dict.into_bytes();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out
    }

    fn read<A: NpyElement>(bytes: &[u8]) -> std::result::Result<ndarray::ArrayD<A>, String> {
        let mut r = bytes;
        let h = read_header(&mut r)?;
        let avail = (bytes.len() - h.header_bytes) as u64;
        read_data::<A>(&mut r, &h, avail, "test array")
    }

    #[test]
    fn encode_writes_numpys_bytes_and_reads_back() {
        let a = ndarray::array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let data: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(encode(&a), npy("<f4", false, "(2, 3)", &data), "numpy.save's image");
        // a transposed view is written in its logical (C) order
        let t = read::<f32>(&encode(&a.t())).unwrap();
        assert_eq!(t, a.t().into_dyn());
        let z = ndarray::array![Complex::new(1.0f64, -2.0), Complex::new(0.5, 3.0)];
        assert_eq!(read::<Complex<f64>>(&encode(&z)).unwrap(), z.into_dyn());
        let ids = ndarray::array![7i64, 8, 9];
        assert_eq!(encode(&ids), npy("<i8", false, "(3,)", &[7i64, 8, 9].map(i64::to_le_bytes).concat()));
        let scalar = ndarray::arr0(2.5f64);
        assert_eq!(read::<f64>(&encode(&scalar)).unwrap()[[]], 2.5);
        assert_eq!(encode(&a).len() % 64, data.len() % 64, "data start at a multiple of 64 bytes");
    }

    #[test]
    fn headers_and_layouts_decode_like_numpy() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let c = read::<f32>(&npy("<f4", false, "(2, 3)", &data)).unwrap();
        assert_eq!(c.shape(), &[2, 3]);
        assert_eq!(c[[1, 0]], 4.0);
        let f = read::<f32>(&npy("<f4", true, "(2, 3)", &data)).unwrap();
        assert_eq!(f[[1, 0]], 2.0); // column-major: the second value is row 1
        let be: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(read::<f64>(&npy(">f8", false, "(2,)", &be)).unwrap().as_slice().unwrap(), &[1.5, -2.0]);
        let scalar = read::<i64>(&npy("<i8", false, "()", &7i64.to_le_bytes())).unwrap();
        assert_eq!((scalar.ndim(), scalar[[]]), (0, 7));
        let z: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(read::<Complex<f64>>(&npy(">c16", false, "(1,)", &z)).unwrap()[[0]], Complex::new(1.0, 2.0));
    }

    #[test]
    fn crafted_headers_are_refused_before_allocating() {
        let e = read::<f64>(&npy("<f8", false, "(2000000000000,)", &[0; 16])).unwrap_err();
        assert!(
            e.contains("declares shape [2000000000000] (16000000000000 bytes of float64) but only 16 bytes"),
            "{e}"
        );
        let e = read::<f32>(&npy("<f4", false, "(18446744073709551615, 4)", &[])).unwrap_err();
        assert!(e.contains("more than 2^64"), "{e}");
        let e = read::<f32>(&npy("<f8", false, "(1,)", &[0; 8])).unwrap_err();
        assert!(e.contains("holds float64 data"), "{e}");
        let e = read::<f32>(&npy("<f4", false, "(4,)", &[0; 8])).unwrap_err();
        assert!(e.contains("only 8 bytes"), "{e}");
        for bad in
            [&b"\x93NUMPX\x01\x00"[..], b"\x93NUMPY\x09\x00\x00\x00", b"\x93NUMPY\x02\x00\xff\xff\xff\xff", b"\x93NU"]
        {
            assert!(read::<f32>(bad).is_err());
        }
        assert!(read::<f32>(&npy("<f4", false, "(a, 2)", &[])).is_err());
    }
}
