"""cuBLAS (default), cuBLASLt preference and Inductor max-autotune GEMMs for the ViT-L layer shapes at 8197 tokens."""
import json, sys, torch, torch.nn.functional as F

from benchmarks.bench_linear_attention import cuda_median_ms
M = 8197
x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
h = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
ws = {"qkv": (x, torch.randn(3072, 1024, device="cuda", dtype=torch.bfloat16) * .02, torch.zeros(3072, device="cuda", dtype=torch.bfloat16)),
      "o": (x, torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) * .02, torch.zeros(1024, device="cuda", dtype=torch.bfloat16)),
      "fc1": (x, torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16) * .02, torch.zeros(4096, device="cuda", dtype=torch.bfloat16)),
      "fc2": (h, torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16) * .02, torch.zeros(1024, device="cuda", dtype=torch.bfloat16))}
res = {}
with torch.inference_mode():
    for name, (a, w, b) in ws.items():
        flops = 2 * M * w.shape[0] * w.shape[1]
        r = {"cublas_us": 1e3 * cuda_median_ms(lambda: F.linear(a, w, b), iters=100)}
        torch.backends.cuda.preferred_blas_library("cublaslt")
        r["cublaslt_us"] = 1e3 * cuda_median_ms(lambda: F.linear(a, w, b), iters=100)
        torch.backends.cuda.preferred_blas_library("cublas")
        f = torch.compile(lambda a, w, b: F.linear(a, w, b), mode="max-autotune-no-cudagraphs", dynamic=False)
        f(a, w, b)
        r["inductor_max_autotune_us"] = 1e3 * cuda_median_ms(lambda: f(a, w, b), iters=100)
        for k in list(r):
            r[k.replace("_us", "_tflops")] = flops / r[k] / 1e6
        res[name] = r
        print(name, {k: round(v, 1) for k, v in r.items()}, flush=True)
        torch._dynamo.reset()
json.dump(res, open(sys.argv[1] + "/gemm_shapes.json", "w"), indent=1)
