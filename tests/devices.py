"""Where the tests run: the device and the dtypes the kernel tests cover (a plain module, so that
tests import it by name: ``conftest`` is a different module in each test folder)."""

import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# bf16 tl.dot is wrong under the interpreter (triton issue 11584): bf16 is tested on GPU only.
KERNEL_DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if HAS_CUDA else [])
