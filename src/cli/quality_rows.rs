//! The finished rows of `ddpm quality`, kept beside its table (`rows.tsv` in the grid folder) so that a stopped
//! run, or one given a new kind of row, runs again only what it has not measured with the same settings.

use anyhow::Result;
use ddpm::atomic_write::write_atomic;
use ddpm::eval::Quality;
use std::collections::HashMap;
use std::path::Path;

/// A finished row's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Done {
    pub calls: usize,
    pub seconds: f64,
    /// The grid's path relative to the table.
    pub grid: String,
    /// FID at the row's n.
    pub fid: f64,
    /// The real-vs-real floor at the row's n: mean, smallest, largest.
    pub floor: [f64; 3],
    /// The classifier's mean confidence and the entropy of its predicted digits.
    pub confidence: f64,
    pub entropy: f64,
    /// FID of the row's first ddpm-n images and the floor at that n (solver rows, when ddpm-n < n).
    pub small: Option<[f64; 2]>,
    /// The fraction of each digit's images classified as that digit (guidance rows).
    pub accuracy: Vec<f64>,
    /// The round-trip error of the inversion rows: its mean over the digits and the worst digit's.
    pub roundtrip: Option<[f64; 2]>,
}

impl Done {
    /// The numbers of one scored set of images.
    pub fn of(q: &Quality, (calls, seconds): (usize, f64), grid: String) -> Self {
        Done {
            calls,
            seconds,
            grid,
            fid: q.fid,
            floor: [q.fid_floor, q.fid_floor_range.0, q.fid_floor_range.1],
            confidence: q.classes.confidence,
            entropy: q.classes.entropy,
            ..Done::default()
        }
    }

    /// One line: the row's name, then its fields separated by tabs (`-` for none; f64 written so that it parses
    /// back to the same bits).
    fn line(&self, name: &str) -> String {
        let list = |v: &[f64]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(",")
            }
        };
        let fields = [
            name.to_string(),
            self.calls.to_string(),
            format!("{:?}", self.seconds),
            self.grid.clone(),
            format!("{:?}", self.fid),
            list(&self.floor),
            format!("{:?}", self.confidence),
            format!("{:?}", self.entropy),
            list(self.small.as_ref().map_or(&[], |s| &s[..])),
            list(&self.accuracy),
            list(self.roundtrip.as_ref().map_or(&[], |r| &r[..])),
        ];
        fields.join("\t")
    }

    /// The name and row of a [`Done::line`]; `None` for a line it did not write.
    fn parse(line: &str) -> Option<(String, Done)> {
        let mut f: Vec<&str> = line.split('\t').collect();
        // A row without the round-trip field is a sampling row.
        if f.len() == 10 {
            f.push("-");
        }
        let [name, calls, seconds, grid, fid, floor, confidence, entropy, small, accuracy, roundtrip] = f[..] else {
            return None;
        };
        let list = |s: &str| -> Option<Vec<f64>> {
            if s == "-" {
                return Some(vec![]);
            }
            s.split(',').map(|x| x.parse().ok()).collect()
        };
        // None for `-`, and for anything but two numbers no value at all.
        let pair = |s: &str| -> Option<Option<[f64; 2]>> {
            match list(s)?[..] {
                [] => Some(None),
                [a, b] => Some(Some([a, b])),
                _ => None,
            }
        };
        let done = Done {
            calls: calls.parse().ok()?,
            seconds: seconds.parse().ok()?,
            grid: grid.to_string(),
            fid: fid.parse().ok()?,
            floor: list(floor)?.try_into().ok()?,
            confidence: confidence.parse().ok()?,
            entropy: entropy.parse().ok()?,
            small: pair(small)?,
            accuracy: list(accuracy)?,
            roundtrip: pair(roundtrip)?,
        };
        Some((name.to_string(), done))
    }
}

/// The rows measured before with `settings` (the first line of the file), by name; none when the file is missing,
/// unreadable or made with other settings.
pub fn load(path: &Path, settings: &str) -> HashMap<String, Done> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    let mut lines = text.lines();
    if lines.next() != Some(&format!("# {settings}")) {
        return HashMap::new();
    }
    lines.filter_map(Done::parse).collect()
}

/// Writes `rows` (name, row) under `settings`, atomically.
pub fn save(path: &Path, settings: &str, rows: &[(String, &Done)]) -> Result<()> {
    let mut text = format!("# {settings}\n");
    for (name, d) in rows {
        text.push_str(&d.line(name));
        text.push('\n');
    }
    write_atomic(path, |w| {
        w.write_all(text.as_bytes()).map_err(|e| ddpm::Error::file(path, format!("write failed: {e}")))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_bit_for_bit_and_only_under_their_settings() {
        let row = Done {
            calls: 51,
            seconds: 12.345678901,
            grid: "quality/ddim-50.png".into(),
            fid: 87.00123456789,
            floor: [12.75, 10.16, 16.33],
            confidence: 0.1 + 0.2,
            entropy: 10f64.ln(),
            small: Some([90.5, 24.6]),
            accuracy: vec![],
            roundtrip: None,
        };
        let inversion = Done { small: None, roundtrip: Some([0.021, 0.06]), ..Done::default() };
        let guided = Done { small: None, accuracy: vec![0.97, 1.0, 1.0 / 3.0], ..row.clone() };
        let dir = std::env::temp_dir().join(format!("ddpm-quality-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.tsv");
        let rows =
            [("DDIM-50".into(), &row), ("guided w=3".into(), &guided), ("DDIM-50 round trip".into(), &inversion)];
        save(&path, "settings A", &rows).unwrap();
        let back = load(&path, "settings A");
        assert_eq!(back.get("DDIM-50"), Some(&row));
        assert_eq!(back.get("guided w=3"), Some(&guided));
        assert_eq!(back.get("DDIM-50 round trip"), Some(&inversion));
        // A line of ten fields, as sampling rows were written before the round-trip field, still reads.
        let ten = row.line("DDIM-50").rsplit_once('\t').unwrap().0.to_string();
        assert_eq!(Done::parse(&ten), Some(("DDIM-50".to_string(), row.clone())));
        assert!(load(&path, "settings B").is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
