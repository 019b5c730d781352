import batchserve, time, statistics, torch
from batchserve.models.paged_decode import load_kernel
from batchserve.models.attention import PagedAttention, _visible
load_kernel()
print(torch.ops.batchserve.paged_prefill_supported(64))
torch.manual_seed(0)
blocks, bs, kvh, hd, heads = 8192, 16, 3, 64, 9
att = PagedAttention(heads, kvh, hd)
for dt in (torch.float32, torch.bfloat16):
    k = torch.randn(blocks*bs, kvh, hd, dtype=dt); v = torch.randn_like(k)
    for c, n in ((600, 20), (600, 64), (1500, 20), (200, 128), (600, 512), (0, 5)):
        L = c + n; nb = (L + bs - 1)//bs
        reqs = [(torch.randperm(blocks)[:nb].repeat_interleave(bs)*bs + torch.arange(bs).repeat(nb))[:L] for _ in range(30)]
        q = torch.randn(n, heads, hd, dtype=dt)
        mask = _visible(torch.arange(c, c+n)[:, None], torch.arange(L)[None, :], None)
        def gather():
            for s in reqs: att._prefill(q, k.index_select(0, s), v.index_select(0, s), mask, 0.125)
        def inplace():
            for s in reqs: torch.ops.batchserve.paged_prefill(q, k, v, s, c, 0, 0.125)
        s = reqs[0]
        a = att._prefill(q, k.index_select(0, s), v.index_select(0, s), mask, 0.125).float()
        b = torch.ops.batchserve.paged_prefill(q, k, v, s, c, 0, 0.125).float()
        err = (a-b).abs().max().item()
        res = {}
        for name, f in (("gather", gather), ("inplace", inplace)) * 2:
            f(); ts=[]
            for _ in range(9):
                t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
            res[name] = statistics.median(ts)*1e3
        print(dt, f"ctx {c} chunk {n}: gather+sdpa {res['gather']:.2f} ms, in place {res['inplace']:.2f} ms, {res['gather']/res['inplace']:.2f}x, max err {err:.1e}", flush=True)
