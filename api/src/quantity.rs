//! Resource quantities as people write them: CPU as cores (`2`, `0.5`) or
//! millicores (`500m`), memory as bytes with binary (`256Mi`) or decimal
//! (`100M`) suffixes. Stored as integers so arithmetic is exact.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a quantity. The message names the input so the
/// validator can put it after a field path: `resources.memory: "12Zb" is not a size`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a CPU amount: use cores (\"2\", \"0.5\") or millicores (\"500m\")")]
    Cpu(String),
    #[error("{0:?} is not a size: use bytes or a suffix such as \"512Mi\", \"2Gi\", \"100M\"")]
    Memory(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// CPU in millicores: `1000` is one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu(pub u64);

/// Memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(pub u64);

impl Cpu {
    pub const fn millis(self) -> u64 {
        self.0
    }
}

impl Memory {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Parses `int[.frac]` scaled by `10^scale_digits`, rejecting anything that
/// does not land on a whole unit (e.g. `0.0001` cores).
fn parse_decimal(s: &str, scale_digits: u32) -> Option<Result<u64, ()>> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale_digits as usize {
        return None;
    }
    let scale = 10u64.pow(scale_digits);
    let int_val: u64 = if int.is_empty() {
        0
    } else {
        match int.parse::<u64>() {
            Ok(v) => v,
            Err(_) => return Some(Err(())),
        }
    };
    let mut frac_val: u64 = 0;
    for (i, c) in frac_trimmed.bytes().enumerate() {
        frac_val += u64::from(c - b'0') * 10u64.pow(scale_digits - 1 - i as u32);
    }
    Some(
        int_val
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_val))
            .ok_or(()),
    )
}

impl FromStr for Cpu {
    type Err = QuantityError;
    fn from_str(raw: &str) -> Result<Self, QuantityError> {
        let s = raw.trim();
        let bad = || QuantityError::Cpu(raw.to_string());
        let parsed = match s.strip_suffix('m') {
            Some(millis) => parse_decimal(millis, 0),
            None => parse_decimal(s, 3),
        };
        match parsed {
            None => Err(bad()),
            Some(Err(())) => Err(QuantityError::Overflow(raw.to_string())),
            Some(Ok(v)) => Ok(Cpu(v)),
        }
    }
}

const MEMORY_UNITS: [(&str, u64); 12] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
];

impl FromStr for Memory {
    type Err = QuantityError;
    fn from_str(raw: &str) -> Result<Self, QuantityError> {
        let s = raw.trim();
        let bad = || QuantityError::Memory(raw.to_string());
        let (number, multiplier) = MEMORY_UNITS
            .iter()
            .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
            .unwrap_or((s, 1));
        // Fractions are allowed ("1.5Gi") as long as they come to whole bytes.
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty()
            || !int.bytes().all(|c| c.is_ascii_digit())
            || !frac.bytes().all(|c| c.is_ascii_digit())
            || (number.contains('.') && frac.is_empty())
        {
            return Err(bad());
        }
        let overflow = || QuantityError::Overflow(raw.to_string());
        let int_val: u64 = int.parse().map_err(|_| overflow())?;
        let mut total = int_val.checked_mul(multiplier).ok_or_else(overflow)?;
        let frac = frac.trim_end_matches('0');
        if !frac.is_empty() {
            if frac.len() > 18 {
                return Err(bad());
            }
            let denom = 10u128.pow(frac.len() as u32);
            let num = frac.parse::<u128>().map_err(|_| bad())? * u128::from(multiplier);
            if num % denom != 0 {
                return Err(bad());
            }
            let extra = u64::try_from(num / denom).map_err(|_| overflow())?;
            total = total.checked_add(extra).ok_or_else(overflow)?;
        }
        Ok(Memory(total))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for Memory {
    /// The largest binary unit that divides the size exactly, so the text
    /// parses back to the same number of bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, m) in MEMORY_UNITS[..6].iter().rev() {
            if self.0 != 0 && self.0 % m == 0 {
                return write!(f, "{}{}", self.0 / m, suffix);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accepts a string or a JSON/YAML number. A bare number of CPU means cores
/// (as in Kubernetes); a bare number of memory means bytes.
struct QuantityVisitor<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = QuantityError>> de::Visitor<'_> for QuantityVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity as a string or a non-negative number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_accepts_cores_and_millicores() {
        for (text, millis) in [
            ("500m", 500),
            ("2", 2000),
            ("0.5", 500),
            ("1.25", 1250),
            (".5", 500),
            ("0", 0),
        ] {
            assert_eq!(text.parse::<Cpu>(), Ok(Cpu(millis)), "{text}");
        }
        for bad in [
            "", "m", "-1", "1.5m", "0.0001", "2 cores", "1e3", "1.", "NaN",
        ] {
            assert!(bad.parse::<Cpu>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn memory_accepts_binary_and_decimal_suffixes() {
        for (text, bytes) in [
            ("256Mi", 256 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("100M", 100_000_000),
            ("4096", 4096),
            ("2k", 2000),
        ] {
            assert_eq!(text.parse::<Memory>(), Ok(Memory(bytes)), "{text}");
        }
        for bad in ["12Zb", "", "Mi", "-1Mi", "1.Mi", "0.3", "1.1Ki"] {
            assert!(bad.parse::<Memory>().is_err(), "{bad} parsed");
        }
        assert!(matches!(
            "99999999Ei".parse::<Memory>(),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn error_messages_quote_the_input() {
        let err = "12Zb".parse::<Memory>().unwrap_err();
        assert!(
            err.to_string().starts_with("\"12Zb\" is not a size"),
            "{err}"
        );
    }

    #[test]
    fn numbers_deserialize_as_cores_and_bytes() {
        assert_eq!(serde_json::from_str::<Cpu>("2").unwrap(), Cpu(2000));
        assert_eq!(serde_json::from_str::<Cpu>("0.25").unwrap(), Cpu(250));
        assert_eq!(
            serde_json::from_str::<Memory>("1024").unwrap(),
            Memory(1024)
        );
        assert!(serde_json::from_str::<Memory>("-5").is_err());
    }

    proptest! {
        #[test]
        fn cpu_display_parses_back(millis in any::<u64>()) {
            let cpu = Cpu(millis);
            prop_assert_eq!(cpu.to_string().parse::<Cpu>(), Ok(cpu));
        }

        #[test]
        fn memory_display_parses_back(bytes in any::<u64>()) {
            let mem = Memory(bytes);
            prop_assert_eq!(mem.to_string().parse::<Memory>(), Ok(mem));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,24}") {
            let _ = s.parse::<Cpu>();
            let _ = s.parse::<Memory>();
        }
    }
}
