"""Bad input gets a clear error that names the argument."""

import pytest
import torch
from circuit_stats.kernels import attention_with_stats


def qkv(B=1, Hq=2, Hkv=2, Nq=8, Nk=8, D=16, dtype=torch.float32):
    return (torch.randn(B, Hq, Nq, D, dtype=dtype), torch.randn(B, Hkv, Nk, D, dtype=dtype),
            torch.randn(B, Hkv, Nk, D, dtype=dtype))


@pytest.mark.parametrize(
    "make,kwargs,exc,needle",
    [
        (lambda: qkv(D=48), {}, ValueError, "head_dim"),
        (lambda: qkv(Hq=3, Hkv=2), {}, ValueError, "multiple"),
        (lambda: qkv(Nq=9, Nk=8), {}, ValueError, "q length"),
        (lambda: (qkv()[0].double(), *qkv()[1:]), {}, TypeError, "q must be float16"),
        (lambda: (qkv()[0], qkv()[1].half(), qkv()[2]), {}, TypeError, "share a dtype"),
        (lambda: (qkv()[0][0], *qkv()[1:]), {}, ValueError, "q must be 4-D"),
        (lambda: (qkv()[0], qkv(Nk=9)[1], qkv()[2]), {}, ValueError, "same shape"),
        (lambda: (qkv(B=2)[0], *qkv()[1:]), {}, ValueError, "batch"),
        (qkv, {"offsets": (1, -1)}, ValueError, "offsets must be >= 0"),
        (qkv, {"offsets": (1.5,)}, TypeError, "offsets must hold ints"),
        (qkv, {"offsets": 3}, TypeError, "offsets must be a sequence"),
        (qkv, {"token_ids": torch.zeros(1, 7, dtype=torch.long)}, ValueError, "token_ids must have shape"),
        (qkv, {"token_ids": torch.zeros(1, 8)}, TypeError, "token_ids must be an integer"),
        (qkv, {"token_ids": -torch.ones(1, 8, dtype=torch.long)}, ValueError, "non-negative"),
        (qkv, {"key_padding_mask": torch.ones(1, 8)}, TypeError, "key_padding_mask must be a bool"),
        (qkv, {"key_padding_mask": torch.ones(1, 9, dtype=torch.bool)}, ValueError, "key_padding_mask must have shape"),
        (qkv, {"probe_keys": torch.tensor([[0, 8]])}, ValueError, "probe_keys must be key positions"),
        (qkv, {"probe_keys": torch.tensor([0, 1])}, ValueError, "probe_keys must have shape"),
        (qkv, {"probe_keys": torch.tensor([[0.0]])}, TypeError, "probe_keys must be an integer"),
        (qkv, {"scale": float("nan")}, ValueError, "scale"),
        (qkv, {"backend": "cuda"}, ValueError, "backend must be one of"),
        (qkv, {"entropy": 1}, TypeError, "entropy"),
    ],
)
def test_bad_input_names_the_argument(make, kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        attention_with_stats(*make(), **kwargs)


def test_triton_backend_on_cpu_without_interpreter_explains(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        attention_with_stats(*qkv(), backend="triton")


@pytest.mark.parametrize("feature,kwargs", [("top1", {"top1": True}), ("distance", {"distance": True}),
                                            ("local_window", {"local_window": 3}),
                                            ("span", {"span": torch.tensor([[0, 4]])})])
def test_triton_backend_refuses_features_it_lacks(feature, kwargs):
    from circuit_stats.kernels.dispatch import TRITON_SUPPORTED_FEATURES

    if feature in TRITON_SUPPORTED_FEATURES:
        pytest.skip(f"the Triton kernel implements {feature}")
    with pytest.raises(NotImplementedError, match=feature):
        attention_with_stats(*qkv(), backend="triton", **kwargs)


def test_auto_routes_missing_features_to_torch_and_warns_once(monkeypatch):
    from circuit_stats.kernels import dispatch

    monkeypatch.setattr(dispatch, "TRITON_SUPPORTED_FEATURES", frozenset())
    monkeypatch.setattr(dispatch, "_warned_features", set())
    cuda = torch.device("cuda")
    assert dispatch.resolve_backend("auto", cuda) == "triton"
    with pytest.warns(UserWarning, match="top1"):
        assert dispatch.resolve_backend("auto", cuda, ["top1"]) == "torch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve_backend("auto", cuda, ["top1"]) == "torch"  # no second warning
