"""Evaluation (docs/architecture.md): metrics and references (``metrics``), per-sample damage
(``damage``) and the attack evaluation (``attack_eval``)."""
