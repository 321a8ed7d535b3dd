"""Published figures that measured rows are set beside: Burda et al. 2015, Table 1 (MNIST).

Plain data and pure functions (no Keras), read by the report. A measured model matches a
published row by (stochastic layers, objective family, k): the family of the registry, "elbo"
for the VAE rows (any k-sample ELBO: eq. 4's closed-form KL and eq. 5's one-sample KL are two
estimators of the same bound) and "iwae" for the IWAE rows; IWAE k=1 is the VAE k=1.
"""
from __future__ import annotations

from dataclasses import dataclass

SOURCE = ("Burda, Grosse & Salakhutdinov 2015, Importance Weighted Autoencoders "
          "(arXiv:1509.00519, ICLR 2016), Table 1, MNIST")

# Their budget, for the same line as each row: the whole of Burda's schedule (sum of 3^i
# passes, i = 0..7, learning rate 1e-3 * 10^(-i/7), Adam), batch 20 over the 60,000 training
# digits (no validation set carved), dynamic binarization, NLL = -L_5000 on the 10,000 test digits.
BUDGET = {"data": "MNIST 60,000 train / 10,000 test", "passes": 3280, "batch_size": 20,
          "updates": 3280 * 60_000 // 20, "schedule": "burda, 8 stages", "device": "GPU"}


@dataclass(frozen=True)
class Row:
    layers: int
    family: str  # "elbo" (the VAE rows) | "iwae"
    k: int
    nll: float  # nats, -L_5000 on the test set
    active_units: tuple[int, ...]  # per stochastic layer, the first nearest the data

    @property
    def label(self) -> str:
        return f"{'VAE' if self.family == 'elbo' else 'IWAE'} k={self.k}, {self.layers} layer" \
            + ("s" if self.layers > 1 else "")


# NLLs checked against an independent reproduction's table of the paper's figures (nbip/IWAE,
# README); active units (two layers: h1 + h2) as recalled from the paper's Table 1, not
# checked against a copy of it (none was reachable where this was written).
TABLE_1: tuple[Row, ...] = (
    Row(1, "elbo", 1, 86.76, (19,)), Row(1, "elbo", 5, 86.47, (20,)),
    Row(1, "elbo", 50, 86.35, (20,)),
    Row(1, "iwae", 1, 86.76, (19,)), Row(1, "iwae", 5, 85.54, (22,)),
    Row(1, "iwae", 50, 84.78, (25,)),
    Row(2, "elbo", 1, 85.33, (16, 5)), Row(2, "elbo", 5, 85.01, (17, 5)),
    Row(2, "elbo", 50, 84.78, (17, 5)),
    Row(2, "iwae", 1, 85.33, (16, 5)), Row(2, "iwae", 5, 83.89, (21, 5)),
    Row(2, "iwae", 50, 82.90, (26, 7)),
)


def published(layers: int, family: str, k: int) -> Row | None:
    """Burda's row for a model of this shape, or None (a prior-sampling model, another k)."""
    if family == "iwae" and k == 1:
        family = "elbo"
    for row in TABLE_1:
        if (row.layers, row.family, row.k) == (layers, family, k):
            return row
    return None


def table(measured: list[dict]) -> list[str]:
    """Markdown rows: each measured model beside its published row, with both budgets.

    `measured`: dicts with name, layers, family, k, nll, active_units (per layer), and the
    budget keys data, passes, batch_size, updates, schedule, device."""
    head = ["| model | Burda's row | NLL | Burda | gap (nats) | active units | Burda | "
            "budget (data; passes; batch; updates; schedule; device) |",
            "|---|---|---|---|---|---|---|---|"]
    lines = []
    for m in measured:
        row = published(m["layers"], m["family"], m["k"])
        if row is None:
            continue
        units = "+".join(str(u) for u in m["active_units"])
        budget = "; ".join(str(m[key]) if not isinstance(m[key], int) else f"{m[key]:,}"
                           for key in ("data", "passes", "batch_size", "updates", "schedule",
                                       "device"))
        lines.append(f"| {m['name']} | {row.label} | {m['nll']:.2f} | {row.nll:.2f} | "
                     f"{m['nll'] - row.nll:+.2f} | {units} | "
                     f"{'+'.join(str(u) for u in row.active_units)} | {budget} |")
    if not lines:
        return []
    b = BUDGET
    theirs = (f"{b['data']}; {b['passes']:,} passes; batch {b['batch_size']}; "
              f"{b['updates']:,} updates; schedule {b['schedule']}; {b['device']}")
    return head + lines + ["", f"Published figures: {SOURCE}; their budget: {theirs}. "
                           "A positive gap is nats worse than published."]
