"""``transformerlens_scores`` directly: detect_head on repeated random tokens behind a BOS (the
sequences TransformerLens users build for induction heads), every exclusion, against eager
attention; and its refusals."""

import numpy as np
import pytest
import torch
from eager_peers import transformerlens_reference
from hf_helpers import model_pair

from circuit_stats.protocols import repeat
from circuit_stats.protocols.transformerlens import transformerlens_scores

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)


@pytest.mark.parametrize("exclude_bos,exclude_current_token", [(False, False), (True, True)])
def test_repeated_tokens_match_eager_detect_head(exclude_bos, exclude_current_token):
    ours, eager = model_pair("olmoe", vocab_size=40)
    seqs = [[0] + s for s in repeat.make_sequences(5, 11, 1, 40, seed=7).tolist()]  # BOS 0, then L=11 twice
    got = transformerlens_scores(ours, seqs, batch_size=2, exclude_bos=exclude_bos,
                                 exclude_current_token=exclude_current_token, progress=False)
    want = transformerlens_reference(eager, seqs, exclude_bos, exclude_current_token)
    for name, val in want.items():
        np.testing.assert_allclose(got[name].numpy(), val.numpy(), atol=1e-6, rtol=0, err_msg=name)
    assert got["sink"].shape == want["induction"].shape


def test_sequences_need_two_tokens():
    ours, _ = model_pair("pythia", vocab_size=40)
    with pytest.raises(ValueError, match=">= 2 tokens"):
        transformerlens_scores(ours, [[0, 5, 6], [0]], batch_size=2, progress=False)
    assert torch.is_tensor(transformerlens_scores(ours, [[0, 5]], batch_size=1, progress=False)["induction"])
