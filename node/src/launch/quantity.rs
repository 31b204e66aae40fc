//! Kubernetes resource quantities (`500m`, `1.5Gi`, `1e3`), exactly, and
//! rounded up as `Quantity.Value()` and `MilliValue()` round them.

/// A non-negative quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Quantity {
    mantissa: u128,
    exp10: i64,
    exp2: u32,
}

impl Quantity {
    /// `<number><suffix>`: a decimal number (`1`, `1.5`, `.5`, `5.`) and a
    /// binary (`Ki`…`Ei`), decimal (`n`, `u`, `m`, `k`, `M`…`E`) or
    /// exponent (`e3`, `E-2`) suffix.
    pub(super) fn parse(text: &str) -> Result<Self, &'static str> {
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        if unsigned.starts_with('-') {
            return Err("a resource quantity is not negative");
        }
        let number_end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err("no number");
        }
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 38 {
            return Err("too many digits");
        }
        let mantissa = if digits.is_empty() {
            0
        } else {
            digits.parse::<u128>().map_err(|_| "no number")?
        };
        let (exp10, exp2) = suffix_exponents(suffix)?;
        let fraction_len = i64::try_from(fraction.len()).map_err(|_| "too many digits")?;
        Ok(Self {
            mantissa,
            exp10: exp10 - fraction_len,
            exp2,
        })
    }

    /// The quantity rounded up to a whole number of units.
    pub(super) fn value(&self) -> Option<u128> {
        self.scaled_up(0)
    }

    /// The quantity in thousandths, rounded up.
    pub(super) fn milli_value(&self) -> Option<u128> {
        self.scaled_up(3)
    }

    /// `⌈quantity × 10^scale⌉`, or `None` past `u128`.
    fn scaled_up(&self, scale: i64) -> Option<u128> {
        let n = self.mantissa.checked_mul(1u128.checked_shl(self.exp2)?)?;
        let exp = self.exp10 + scale;
        let power = |e: i64| u32::try_from(e).ok().and_then(|e| 10u128.checked_pow(e));
        if exp >= 0 {
            n.checked_mul(power(exp)?)
        } else {
            // Past 10^38 the divisor exceeds any n: the ceiling is 0 or 1.
            Some(power(-exp).map_or(u128::from(n > 0), |d| n.div_ceil(d)))
        }
    }
}

/// The suffix as powers of ten and two.
fn suffix_exponents(suffix: &str) -> Result<(i64, u32), &'static str> {
    Ok(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E']).ok_or("unknown suffix")?;
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err("unknown suffix");
            }
            let exponent = exponent
                .parse::<i32>()
                .map_err(|_| "exponent out of range")?;
            (i64::from(exponent), 0)
        }
    })
}
