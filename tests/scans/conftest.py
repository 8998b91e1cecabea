"""A synthetic xu2026-style scan with known answers, shared by the emergence and report tests."""

import pandas as pd
import pytest

# 5 revisions x 2 layers x 4 heads. Induction screen: 1, 3, 4, 4, 4 heads; first-token labels:
# 0, 1, 3, 5, 6 heads (fractions 0, .125, .375, .625, .75), never in layer 0.
REVS = [("s0", 0, 0), ("s10", 10, 100), ("s20", 20, 200), ("s40", 40, 400), ("s80", 80, 800)]
INDUCTION = [{(0, 0)}, {(0, 0), (0, 1), (0, 2)}, {(0, 1), (0, 2), (0, 3), (1, 3)}, {(0, 0), (0, 1), (0, 2), (0, 3)},
             {(0, 0), (0, 1), (0, 2), (0, 3)}]
SINKS = [set(), {(1, 0)}, {(1, 0), (1, 1), (1, 2)}, {(1, 0), (1, 1), (1, 2), (1, 3), (0, 3)},
         {(1, 0), (1, 1), (1, 2), (1, 3), (0, 3), (0, 2)}]


def synthetic_table() -> pd.DataFrame:
    rows = []
    for (rev, step, tokens), ind, sinks in zip(REVS, INDUCTION, SINKS):
        for layer in range(2):
            for head in range(4):
                h = (layer, head)
                label = "first-token" if h in sinks else ("induction" if h in ind else "unclassified")
                rows.append(dict(model="m", revision=rev, step=step, tokens=tokens, protocol="xu2026", layer=layer,
                                 head=head, sel_induction=60.0 if h in ind else 2.0, screen_induction=h in ind,
                                 label=label))
    return pd.DataFrame(rows)



@pytest.fixture
def synthetic_results() -> pd.DataFrame:
    return synthetic_table()
