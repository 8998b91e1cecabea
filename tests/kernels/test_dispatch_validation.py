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
        (lambda: qkv(D=0), {}, ValueError, "head_dim"),
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
        (qkv, {"scale": 0.0}, ValueError, "scale must be a finite real number > 0"),
        (qkv, {"scale": -0.125}, ValueError, "scale must be a finite real number > 0"),
        (qkv, {"scale": -1}, ValueError, "scale must be a finite real number > 0"),
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
                                            ("window", {"window": 3}), ("softcap", {"softcap": 5.0}),
                                            ("sinks", {"sinks": torch.zeros(2)}),
                                            ("local_window", {"local_window": 3}),
                                            ("span", {"span": torch.tensor([[0, 4]])}),
                                            ("key_mass", {"key_mass": True})])
def test_triton_backend_runs_every_feature(feature, kwargs):
    """Every optional feature but head dims > 256 is in the fused kernel: backend="triton" runs it
    and returns the same statistics as the torch backend (accuracy: test_attention_correctness,
    test_score_modifiers)."""
    from circuit_stats.kernels.dispatch import OPTIONAL_FEATURES, TRITON_SUPPORTED_FEATURES

    assert set(TRITON_SUPPORTED_FEATURES) == set(OPTIONAL_FEATURES) - {"head_dim>256", "fp32 over shared memory"}
    q, k, v = qkv()
    out_t, st_t = attention_with_stats(q, k, v, backend="triton", **kwargs)
    out_c, st_c = attention_with_stats(q, k, v, backend="torch", **kwargs)
    torch.testing.assert_close(out_t, out_c, atol=1e-4, rtol=0)
    assert st_t.as_dict().keys() == st_c.as_dict().keys()
    for name, val in st_c.as_dict().items():
        torch.testing.assert_close(getattr(st_t, name), val, atol=1e-4, rtol=0, msg=f"{feature}: {name}")


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


def test_auto_routes_head_dims_beyond_the_triton_kernel_to_torch():
    import warnings

    from circuit_stats.kernels.dispatch import resolve_backend

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert resolve_backend("auto", torch.device("cuda"), ["head_dim>256"]) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), []) == "triton"
    with pytest.raises(NotImplementedError, match="head_dim>256"):
        resolve_backend("triton", torch.device("cuda"), ["head_dim>256"])
    q = torch.randn(1, 2, 5, 288)
    out, stats = attention_with_stats(q, q, q, entropy=True)  # the torch backend takes any head_dim
    assert out.shape == q.shape and torch.isfinite(stats.entropy).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("scale", [0.0, -0.125, -3])
def test_scale_must_be_positive_on_every_backend(backend, scale):
    """One rule for every backend (the torch backend gave NaN rows for scale <= 0, the Triton
    kernel refused negative scales only), checked before any work."""
    with pytest.raises(ValueError, match=r"scale must be a finite real number > 0 .* got " + str(scale)):
        attention_with_stats(*qkv(), scale=scale, backend=backend, entropy=True)
    with pytest.raises(ValueError, match=r"scale must be a finite real number > 0"):
        attention_with_stats(*qkv(), scale=scale, backend=backend)  # the plain (SDPA) path too
