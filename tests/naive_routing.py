"""Deliberately naive loop implementations of the papers' procedures: the oracle's oracle.

One sample, one child, one parent at a time, written to read like the papers, differentiable by autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def naive_squash(s: Tensor, eps: float = 1e-8) -> Tensor:
    n2 = sum(x * x for x in s)
    return s * (n2 / (1 + n2)) / torch.sqrt(n2 + eps)


def naive_dynamic(votes: Tensor, activations: Tensor | None, iterations: int, detach_inner: bool = False):
    """Sabour Procedure 1 per sample. votes [B, I, J, D] -> (v [B, J, D], |v| [B, J], c [B, I, J])."""
    B, I, J, D = votes.shape
    all_v, all_c = [], []
    for b in range(B):
        logits = [[votes.new_zeros(()) for _ in range(J)] for _ in range(I)]
        for r in range(iterations):
            last = r == iterations - 1
            u = votes[b] if (last or not detach_inner) else votes[b].detach()
            a = None if activations is None else activations[b]
            if a is not None and detach_inner and not last:
                a = a.detach()
            c = []
            for i in range(I):
                m = max(float(x.detach()) for x in logits[i])
                e = [torch.exp(logits[i][j] - m) for j in range(J)]
                z = sum(e)
                c.append([e[j] / z for j in range(J)])
            v = []
            for j in range(J):
                s = votes.new_zeros(D)
                for i in range(I):
                    weight = c[i][j] if a is None else c[i][j] * a[i]
                    s = s + weight * u[i, j]
                v.append(naive_squash(s))
            if not last:
                for i in range(I):
                    for j in range(J):
                        logits[i][j] = logits[i][j] + torch.dot(u[i, j], v[j])
        all_v.append(torch.stack(v))
        all_c.append(torch.stack([torch.stack(row) for row in c]))
    v = torch.stack(all_v)
    return v, torch.linalg.vector_norm(v, dim=-1), torch.stack(all_c)


def naive_em(
    votes: Tensor,
    activations: Tensor | None,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int,
    final_lambda: float = 0.01,
    min_var: float = 1e-4,
    eps: float = 1e-8,
    child_index: Tensor | None = None,
):
    """Hinton 2018 Procedure 1. votes [N, I, J, D]; beta_u, beta_a [J] (or [1]).

    With child_index [P, I], rows are (sample, window) pairs and each sample's child is normalised over every
    (window, parent) it feeds, by an explicit loop over all rows of the sample.
    Returns (mu [N, J, D], a [N, J], R [N, I, J]).
    """
    N, I, J, D = votes.shape
    a_in = torch.ones(N, I, dtype=votes.dtype) if activations is None else activations
    bu = beta_u.expand(J) if beta_u.numel() == 1 else beta_u
    ba = beta_a.expand(J) if beta_a.numel() == 1 else beta_a
    R = [[[votes.new_tensor(1.0 / J) for _ in range(J)] for _ in range(I)] for _ in range(N)]
    for t in range(iterations):
        lam = final_lambda * (1 - 0.95 ** (t + 1))
        mus, vars_, acts = [], [], []
        for n in range(N):
            mu_n, var_n, a_n = [], [], []
            for j in range(J):
                rp = [R[n][i][j] * a_in[n, i] for i in range(I)]
                mass = sum(rp)
                mu = sum(rp[i] * votes[n, i, j] for i in range(I)) / max(mass, mass.new_tensor(eps))
                spread = sum(rp[i] * (votes[n, i, j] - mu) ** 2 for i in range(I))
                var = spread / max(mass, mass.new_tensor(eps)) + min_var
                cost = sum((bu[j] + torch.log(torch.sqrt(var[h]))) * mass for h in range(D))
                a_n.append(torch.sigmoid(lam * (ba[j] - cost)))
                mu_n.append(mu)
                var_n.append(var)
            mus.append(mu_n)
            vars_.append(var_n)
            acts.append(a_n)
        if t == iterations - 1:
            break
        log_num = [[[None] * J for _ in range(I)] for _ in range(N)]
        for n in range(N):
            for i in range(I):
                for j in range(J):
                    var, mu = vars_[n][j], mus[n][j]
                    log_p = sum(
                        -0.5 * (votes[n, i, j, h] - mu[h]) ** 2 / var[h] - 0.5 * torch.log(2 * math.pi * var[h])
                        for h in range(D)
                    )
                    log_num[n][i][j] = torch.log(acts[n][j]) + log_p
        new_R = [[[None] * J for _ in range(I)] for _ in range(N)]
        for n in range(N):
            for i in range(I):
                if child_index is None:
                    group = [(n, i)]
                else:
                    P = child_index.shape[0]
                    sample, child = n // P, int(child_index[n % P, i])
                    group = [
                        (m, k)
                        for m in range(sample * P, sample * P + P)
                        for k in range(I)
                        if int(child_index[m % P, k]) == child
                    ]
                terms = [log_num[m][k][j] for (m, k) in group for j in range(J)]
                top = max(float(x.detach()) for x in terms)
                norm = top + torch.log(sum(torch.exp(x - top) for x in terms))
                for j in range(J):
                    new_R[n][i][j] = torch.exp(log_num[n][i][j] - norm)
        R = new_R
    mu = torch.stack([torch.stack(m) for m in mus])
    act = torch.stack([torch.stack(a) for a in acts])
    assignments = torch.stack([torch.stack([torch.stack(row) for row in Rn]) for Rn in R])
    return mu, act, assignments
