"""The three latent-memory losses against values worked out by hand."""

import math

import torch

from latentlab.memory.losses import distillation_kl, multi_positive_infonce, token_cross_entropy


def test_token_cross_entropy_is_token_mean_ce_ignoring_pads():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    targets = torch.tensor([0, 0, -100])
    # token 1: -log(1/2); token 2: -log(3/4); the third is ignored
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert abs(token_cross_entropy(logits, targets).item() - expected) < 1e-6


def test_infonce_2x3_by_hand():
    # 2 queries, 3 items; query 0 has positives {0, 1}, query 1 has {2}. Keys chosen so similarities are simple.
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mask = torch.tensor([[True, True, False], [False, False, True]])
    t = 0.5
    # query 0 logits: [2, 0, 0] -> log-softmax: 2 - log(e^2 + 2), 0 - log(e^2 + 2)
    z0 = math.log(math.exp(2) + 2)
    loss0 = -((2 - z0) + (0 - z0)) / 2
    # query 1 logits: [0, 2, 2] -> positive at item 2: 2 - log(1 + 2 e^2)
    loss1 = -(2 - math.log(1 + 2 * math.exp(2)))
    expected = (loss0 + loss1) / 2
    got = multi_positive_infonce(queries, items, mask, temperature=t).item()
    assert abs(got - expected) < 1e-6


def test_infonce_gradient_reaches_both_sides():
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(5, 4, requires_grad=True)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = mask[2, 3] = True
    multi_positive_infonce(q, k, mask, 0.07).backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_distillation_kl_forward_direction_by_hand():
    teacher = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    student = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    # KL(t||s) token 1 = 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75); token 2 = 0
    kl1 = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    got = distillation_kl(student, teacher).item()
    assert abs(got - kl1 / 2) < 1e-6
    # reverse direction would differ: KL(s||t) token 1
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert abs(got - reverse / 2) > 1e-3


def test_distillation_kl_zero_when_equal_and_no_teacher_grad():
    logits = torch.randn(4, 7)
    teacher = logits.clone().requires_grad_(True)
    student = logits.clone().requires_grad_(True)
    loss = distillation_kl(student, teacher)
    assert abs(loss.item()) < 1e-6
    (loss + student.sum() * 0).backward()
    assert teacher.grad is None
