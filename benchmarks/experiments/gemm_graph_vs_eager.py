"""Do cuBLAS GEMMs run slower back to back in a CUDA graph than launched one by one? The GEMMs of 24 ViT-L layers at
8192 tokens, eager and as one graph, twice each, with nvidia-smi logging SM clock and power.

    python benchmarks/experiments/gemm_graph_vs_eager.py OUT_DIR
"""
import json, subprocess, sys, time, torch
out = sys.argv[1]
M = 8192
x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
w_qkv, w_o = torch.randn(3072, 1024, device="cuda", dtype=torch.bfloat16) * .02, torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) * .02
w1, w2 = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16) * .02, torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16) * .02
b1 = torch.zeros(4096, device="cuda", dtype=torch.bfloat16)
def layers():
    h = x
    for _ in range(24):
        a = torch.nn.functional.linear(h, w_qkv)
        h = h + torch.nn.functional.linear(a[:, :1024], w_o)
        m = torch._addmm_activation(b1, h, w1.t(), use_gelu=True)
        h = h + torch.nn.functional.linear(m, w2)
    return h
flops = 24 * 2 * M * 1024 * (3072 + 1024 + 4096 * 2)
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(3): layers()
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g): layers()
smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active", "--format=csv,noheader", "-lms", "20"], stdout=open(out + "/smi.csv", "w"))
time.sleep(1)
res = {}
for name, fn in (("eager", layers), ("graph", g.replay), ("eager2", layers), ("graph2", g.replay)):
    marks = []
    for i in range(40):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record(); fn(); e1.record(); torch.cuda.synchronize(); marks.append(e0.elapsed_time(e1))
    marks.sort(); res[name] = {"median_ms": marks[20], "tflops": flops / marks[20] / 1e9, "end": time.time()}
    print(name, res[name], flush=True)
time.sleep(0.5); smi.terminate()
json.dump(res, open(out + "/gemm_graph_vs_eager.json", "w"), indent=1)
