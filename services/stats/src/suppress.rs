//! Small-cell suppression, a property of the data rather than of one endpoint.
//!
//! The rule (the proto doc of `StatsService` states it for callers): a **base cell** is the
//! finest cell the aggregates keep and a query can isolate, for contacts one day × practice ×
//! municipality × GP × contact type × tariff code. For a caller who is not the data's owner a
//! base cell with 1 to [`THRESHOLD`]` - 1` contacts is hidden, and a hidden cell is left out of
//! every figure that caller gets: each published count is a sum of base cells of at least
//! [`THRESHOLD`], whatever the period, level, filter or breakdown. So no combination of
//! published figures (a month minus its days, overlapping ranges, a total minus its parts, a
//! county minus its municipalities) involves a hidden cell, and none can give one back: the
//! figures are the same whatever value from 1 to 4 a hidden cell holds. Complementary
//! suppression is not needed, because no published total includes what a published part
//! hides. A published cell says whether hidden cells were left out of it; its count is then a
//! lower bound.

use std::collections::BTreeMap;

/// Smallest base-cell count published to a caller who is not the data's owner.
pub const THRESHOLD: u64 = 5;

/// Whose eyes figures are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disclosure {
    /// The caller's own organisation's data (an EHR reading its practice): exact, since the
    /// practice holds the records the figures count.
    Own,
    /// Anyone else (operations): base cells below [`THRESHOLD`] are left out of every figure.
    Protected,
}

impl Disclosure {
    /// Whether a base cell of `count` is hidden.
    pub fn hides(self, count: u64) -> bool {
        self == Disclosure::Protected && (1..THRESHOLD).contains(&count)
    }
}

/// One published cell: the sum of the base cells under it that are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell {
    /// Sum of the shown base cells (0 or at least [`THRESHOLD`] when protected).
    pub count: u64,
    /// Hidden base cells were left out of `count`.
    pub suppressed: bool,
}

/// Sums base cells (the published cell each belongs to, its count) into published cells under
/// `d`. A published cell all of whose base cells are hidden is there with count 0 and
/// `suppressed`.
pub fn publish<K: Ord>(
    base: impl IntoIterator<Item = (K, u64)>,
    d: Disclosure,
) -> BTreeMap<K, Cell> {
    let mut out: BTreeMap<K, Cell> = BTreeMap::new();
    for (key, n) in base {
        let cell = out.entry(key).or_default();
        if d.hides(n) {
            cell.suppressed = true;
        } else {
            cell.count += n;
        }
    }
    out
}

/// Keeps the rows whose base cell is shown under `d`. Each row is (base cell, its count in the
/// base cell's total, the row); a base cell is hidden, with all its rows, when its total is 1 to
/// [`THRESHOLD`]` - 1`. For figures that describe a base cell's distribution (response times,
/// video sessions): the distribution of a shown base cell is published whole. Returns the kept
/// rows and whether any base cell was hidden.
pub fn shown_rows<K: Ord, R>(rows: Vec<(K, u64, R)>, d: Disclosure) -> (Vec<R>, bool) {
    let mut totals: BTreeMap<&K, u64> = BTreeMap::new();
    for (k, n, _) in &rows {
        *totals.entry(k).or_default() += n;
    }
    let hidden: Vec<bool> = rows
        .iter()
        .map(|(k, _, _)| d.hides(totals.get(k).copied().unwrap_or_default()))
        .collect();
    let any_hidden = hidden.iter().any(|h| *h);
    let kept = rows
        .into_iter()
        .zip(hidden)
        .filter(|(_, h)| !h)
        .map(|((_, _, r), _)| r)
        .collect();
    (kept, any_hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base cells (day, gp, type, count).
    type Base = Vec<(u32, &'static str, &'static str, u64)>;

    fn base() -> Base {
        vec![
            (1, "gp-a", "in_person", 12),
            (1, "gp-a", "video", 3), // hidden
            (1, "gp-b", "in_person", 5),
            (2, "gp-a", "in_person", 9),
            (2, "gp-b", "in_person", 4), // hidden
            (2, "gp-b", "video", 7),
            (3, "gp-b", "in_person", 1), // hidden
        ]
    }

    /// Every figure a caller can ask for over `base`: for every day range, filter on a GP or
    /// a type (or none) and set of kept dimensions, the published cells.
    fn every_figure(base: &Base, d: Disclosure) -> Vec<(String, Cell)> {
        let mut figures = Vec::new();
        for from in 1..=3 {
            for to in from..=3 {
                for gp in ["", "gp-a", "gp-b"] {
                    for ty in ["", "in_person", "video"] {
                        for keep in 0..8u8 {
                            let cells = publish(
                                base.iter()
                                    .filter(|c| (from..=to).contains(&c.0))
                                    .filter(|c| gp.is_empty() || c.1 == gp)
                                    .filter(|c| ty.is_empty() || c.2 == ty)
                                    .map(|c| {
                                        let day = if keep & 1 != 0 { c.0 } else { 0 };
                                        let g = if keep & 2 != 0 { c.1 } else { "" };
                                        let t = if keep & 4 != 0 { c.2 } else { "" };
                                        ((day, g, t), c.3)
                                    }),
                                d,
                            );
                            for (k, cell) in cells {
                                figures
                                    .push((format!("{from}..{to} {gp} {ty} {keep} {k:?}"), cell));
                            }
                        }
                    }
                }
            }
        }
        figures
    }

    #[test]
    fn the_owner_gets_exact_sums() {
        let cells = publish(base().into_iter().map(|c| (c.1, c.3)), Disclosure::Own);
        assert_eq!(
            cells.get("gp-b"),
            Some(&Cell {
                count: 17,
                suppressed: false
            })
        );
        assert_eq!(cells.get("gp-a").map(|c| c.count), Some(24));
    }

    #[test]
    fn a_hidden_base_cell_is_left_out_of_its_totals_and_marks_them() {
        let cells = publish(
            base().into_iter().map(|c| (c.1, c.3)),
            Disclosure::Protected,
        );
        assert_eq!(
            cells.get("gp-a"),
            Some(&Cell {
                count: 21,
                suppressed: true
            })
        );
        assert_eq!(cells.get("gp-b").map(|c| c.count), Some(12));
        let day3 = publish(
            base().into_iter().filter(|c| c.0 == 3).map(|c| (c.0, c.3)),
            Disclosure::Protected,
        );
        assert_eq!(
            day3.get(&3),
            Some(&Cell {
                count: 0,
                suppressed: true
            })
        );
        assert!(!Disclosure::Protected.hides(0) && !Disclosure::Protected.hides(THRESHOLD));
        assert!(Disclosure::Protected.hides(1) && Disclosure::Protected.hides(THRESHOLD - 1));
    }

    #[test]
    fn a_base_cell_with_a_small_total_loses_all_its_rows() {
        // (day, gp): rows by working days.
        let rows = vec![
            ((1, "gp-a"), 4, "a0"),
            ((1, "gp-a"), 1, "a6"),
            ((1, "gp-b"), 2, "b0"),
            ((1, "gp-b"), 1, "b1"),
            ((2, "gp-b"), 0, "b-empty"),
        ];
        assert_eq!(
            shown_rows(rows.clone(), Disclosure::Protected),
            (vec!["a0", "a6", "b-empty"], true)
        );
        assert_eq!(
            shown_rows(rows, Disclosure::Own),
            (vec!["a0", "a6", "b0", "b1", "b-empty"], false)
        );
    }

    #[test]
    fn every_protected_figure_is_zero_or_at_least_the_threshold() {
        for (what, cell) in every_figure(&base(), Disclosure::Protected) {
            assert!(
                cell.count == 0 || cell.count >= THRESHOLD,
                "{what}: {cell:?}"
            );
        }
    }

    /// The definition of "cannot be derived": no figure, hence no combination of figures,
    /// changes when a hidden cell holds another value it could hold. (Owners' figures do change,
    /// which shows the check can fail.)
    #[test]
    fn no_figure_depends_on_the_value_of_a_hidden_cell() {
        let original = base();
        let protected = every_figure(&original, Disclosure::Protected);
        let own = every_figure(&original, Disclosure::Own);
        for (i, cell) in original.iter().enumerate() {
            if !Disclosure::Protected.hides(cell.3) {
                continue;
            }
            for other in (1..THRESHOLD).filter(|v| *v != cell.3) {
                let mut changed = original.clone();
                changed[i].3 = other;
                assert_eq!(every_figure(&changed, Disclosure::Protected), protected);
                assert_ne!(every_figure(&changed, Disclosure::Own), own);
            }
        }
    }
}
