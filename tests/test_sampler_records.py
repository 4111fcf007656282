"""Store keys and records of the built-in samplers are those of the flat ``SamplerConfig``
(name, steps, eta, clip_denoised) that every existing store was written under: each expected
value below was computed on ``main`` before samplers owned their options (issue 19) and is
hard-coded, so a change of a record, a key or a label fails here."""

from types import SimpleNamespace as NS

import pytest

from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import SamplerConfig, SamplingChain
from dmattack.evaluation.attack_eval.defaults import EvalDefaults
from dmattack.evaluation.attack_eval.store import point_key
from dmattack.evaluation.metrics import curve_folder

T = 100
CASES = [  # name, steps, eta, clip_denoised, describe(T), point_key digest, curve folder
    ("ddpm", None, 0.0, True, "ddpm-100-clip",
     "b5254b16cc0e6d22da056470f53ec031e97784ab73e8003d2a07d9f6193e502b",
     "cf966c472467"),
    ("ddpm", None, 0.0, False, "ddpm-100",
     "c7deefcf461bb4d322c2fb8d2136d1be7f11a827d61bec9bb22bb1d7b3b19c62",
     "647c73692edf"),
    ("ddpm", None, 0.0, None, "ddpm-100",
     "16432f9c4fc0f1f6f20feac7a33adae90b860f078d359b920af62790d0dd1f33",
     "3db203901643"),
    ("respaced", 25, 0.0, True, "respaced-25-clip",
     "6749fdf61bbc918fecfec4b957c363651d090ef80634e12ab34e0c14d5152b69",
     "bd4e8bab072d"),
    ("respaced", 25, 0.0, False, "respaced-25",
     "c2e2df51678823ef31cb345837cb4eda8716110e57a4c4ff0ebb8d993a1b6d4f",
     "37ae5c127913"),
    ("respaced", 25, 0.0, None, "respaced-25",
     "164c8ec87fc4731c981b2705c3932340d57900bf18170fd9cfbe63298e4e1079",
     "5fce1e327526"),
    ("ddim", 50, 0.5, True, "ddim-50-eta0.5-clip",
     "391dbb1fb66cdfb09ca45c4d76080bf29468a2bfc06bbbc1ca96f92d3dcc4132",
     "992287b0723d"),
    ("ddim", 50, 0.5, False, "ddim-50-eta0.5",
     "20cbe710841fb60150744d35356c94fe09d084bc89cb0b06e6e181fef37c4964",
     "fb4bf89bf43f"),
    ("ddim", 50, 0.5, None, "ddim-50-eta0.5",
     "3570049339db6b57e95c41850fd5a90358d247aea8ccfedd6a8832a658edba69",
     "078413b7a0ce"),
    ("ddim", 50, 0.0, True, "ddim-50-clip",
     "0cb7b4b90354dbf386a817879fe13055c49031793a12b8d62da73c617f270f8c",
     "f19312272927"),
    ("ddim", 50, 0.0, False, "ddim-50",
     "cad84910fb8bacea86f33a0d459abb662329c66597eb884a016a27c51df456a7",
     "9c9975369b0c"),
    ("ddim", 50, 0.0, None, "ddim-50",
     "723e59cae8a82e261ef3de6948303f3f246d005a68630d75cd883ff74ac9256e",
     "055e64234a5b"),
]


def _config(name, steps, eta, clip):
    own = {"eta": eta} if name == "ddim" else {}
    return SamplerConfig(name, steps, clip_denoised=clip, **own)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_builtin_sampler_records_and_keys_are_unchanged(case):
    name, steps, eta, clip, label, key, folder = case
    s = _config(name, steps, eta, clip)
    record = {"name": name, "steps": steps, "eta": eta, "clip_denoised": clip}
    assert s.to_dict() == record and list(s.to_dict()) == list(record)  # same order
    assert type(s.to_dict()["eta"]) is float
    assert s.describe(T) == label
    chain = SamplingChain(GaussianDiffusion.from_schedule(num_timesteps=T), s).to_dict()
    assert chain == {**record, "num_steps": steps or T, "label": label}
    assert list(chain) == [*record, "num_steps", "label"]
    assert EvalDefaults(16, s, 8, "L").to_dict() == {
        "num_samples": 16, "sampler": record, "batch_size": 8, "label": "L"}
    loaded = NS(source="runs/tiny", ema=True)
    assert point_key(loaded, "fp", "clean", s, 16, 3, {"metrics": ["variance"]}, None) == \
        f"clean|{key}"
    setup = NS(config=NS(first_sample=0, seed=3), sampler=s, num_samples=16,
               metrics=["variance"], reference=NS(fingerprint="ref"))
    assert str(curve_folder([], [], setup, True, "runs")) == f"runs/curves/{folder}"
