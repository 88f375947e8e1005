"""Pins for ``ft-harness sweep``: how to build an environment for one release of a framework.

One declarative table, read by :func:`harness.sweep.envs.select_pins`. It is a Python literal rather than
TOML on purpose: it ships inside the ``harness`` package with no package-data configuration, needs
no ``tomli`` fallback on Python 3.10, and its comments sit next to the pins they explain. Nothing in
this module is code: data only.

``PINS[framework]``:

``distribution``      the package-index name of the framework (what ``--versions`` is expanded from)
``adapter``           the ft-harness adapter entry point (``--adapter``)
``aliases``           other names accepted on the command line
``ranges``            a list of entries, the first whose ``versions`` specifier contains the version wins:

    ``versions``            PEP 440 specifier set (pre-releases of a range count as in it)
    ``python``              interpreter for the env (``X.Y``; ``--python`` overrides)
    ``no_deps``             install the framework with ``--no-deps`` (its own metadata resolves for
                            minutes or not at all); the requirements below then stand in for its deps
    ``requirements``        extra requirements, resolved together (besides ``DEFAULTS['requirements']``);
                            ``{version}`` in one is the release being swept (``unsloth_zoo<={version}``: the
                            companion package as of that release)
    ``requirements_files``  requirement files, relative to the ft-harness source tree
    ``overrides``           ``uv --overrides``: replace any requirement of that name, including a pin
                            in ``requirements_files`` (a release that needs an older library)
    ``harness_no_deps``     install ft-harness with ``--no-deps`` (its deps are in the requirements)
    ``adapter_options``     default ``--adapter-option``s for this range (command-line ones win)
    ``note``                why the entry looks as it does (shown by ``sweep --show-pins``)

An environment's cache key hashes the selected entry, the contents of its requirement files and the
index settings, so editing a pin rebuilds exactly the environments it applies to.
"""

from __future__ import annotations

#: applied to every environment. torch is pinned to the CPU wheel this project tests with (tox.ini
#: installs the same); on a machine without it in --find-links, uv fetches it from the index.
DEFAULTS = {
    "python": "3.11",
    "requirements": ["torch==2.13.0"],
}

# ms-swift 3.x installs with --no-deps plus requirements/swift3.txt (the tox -e swift3 recipe): its own
# metadata pulls gradio and friends and pip spends over 10 minutes resolving it. 3.1.1-3.4.x run on
# swift3.txt's transformers 4.49.0 / peft 0.14.0 / trl 0.15.2 unchanged (inside every range they
# declare), so a verdict that flips between two of them is ms-swift's doing. 3.0.x (transformers <
# 4.48, trl < 0.12) and 3.1.0 (trl < 0.15) declare older ranges, 3.5+ needs a newer trl than it
# declares: those get overrides.
_SWIFT3 = {
    "python": "3.11",
    "no_deps": True,
    "requirements_files": ["requirements/swift3.txt"],
    # what later 3.x releases added to their requirements beside swift3.txt's (3.5: scipy, simplejson,
    # sortedcontainers; 3.7: pyyaml; 3.9: json-repair; 3.10: omegaconf); gradio (web UI) stays out.
    # msgspec: imported by the training path of later releases without being declared (as in 4.x,
    # which is why ft-harness[swift] lists it)
    "requirements": ["scipy", "simplejson", "sortedcontainers", "pyyaml", "json-repair", "omegaconf", "msgspec"],
    "harness_no_deps": True,
}

# LLaMA-Factory 0.9.0-0.9.3 declare trl<=0.9.6 (0.9.0-0.9.2 also peft<=0.12.0 and transformers <=4.45.0 /
# <=4.46.1 / <=4.49.0): below ft-harness's own floors (trl>=0.15, peft>=0.14, transformers>=4.49), so
# ft-harness is installed --no-deps and its remaining dependencies are listed here (its scenarios import
# trl only for GRPO, which the llamafactory adapter does not offer). LLaMA-Factory resolves the rest.
_LLAMAFACTORY_OLD = {
    "python": "3.11",
    "requirements": ["torch==2.14.1", "torchvision==0.29.1", "bitsandbytes>=0.48", "optimum-quanto>=0.2.5",
                     "diffusers>=0.30,<0.33", "safetensors", "tokenizers", "hypothesis>=6.100", "pytest>=8.0",
                     "pytest-xdist>=3.5", "pytest-timeout>=2.3", "packaging>=23",
                     # they cap numpy < 2; pyarrow 2[1-6] import only beside numpy 2 ("pyarrow requires
                     # NumPy 2.0 or newer, found 1.26.4" from `import datasets`)
                     "pyarrow<21"],
    "overrides": ["torch==2.14.1"],
    "harness_no_deps": True,
}

# ft-harness's other dependencies beside an older transformers (installed --no-deps below its floor)
_TRANSFORMERS_OLD = ["accelerate==1.2.1", "datasets==3.2.0", "bitsandbytes>=0.48", "optimum-quanto>=0.2.5",
                     "diffusers>=0.30,<0.33", "safetensors", "tokenizers", "hypothesis>=6.100", "pytest>=8.0",
                     "pytest-xdist>=3.5"]

PINS = {
    "ms-swift": {
        "distribution": "ms-swift",
        "adapter": "swift",
        "aliases": ["swift"],
        "ranges": [
            {"versions": ">=3.0.0,<3.1.0", **_SWIFT3,
             "overrides": ["transformers==4.47.1", "trl==0.11.4"],
             "note": "ms-swift 3.0.x declares transformers>=4.33,<4.48 and trl>=0.11,<0.12"},
            {"versions": ">=3.1.0,<3.1.1", **_SWIFT3,
             "overrides": ["trl==0.14.0"],
             "note": "ms-swift 3.1.0 declares trl>=0.13,<0.15"},
            {"versions": ">=3.1.1,<3.2.0", **_SWIFT3,
             "note": "tox -e swift3's recipe: --no-deps + requirements/swift3.txt (transformers 4.49.0)"},
            {"versions": ">=3.2.0,<3.4.0", **_SWIFT3,
             "overrides": ["trl==0.16.1"],
             "note": "swift3.txt, but GRPO in 3.2/3.3 asks for trl 'from source' (0.16 features; declares <0.17)"},
            {"versions": ">=3.4.0,<3.5.0", **_SWIFT3,
             "overrides": ["trl==0.17.0"],
             "note": "swift3.txt, but GRPO in 3.4 calls trl 0.15/0.16 outdated (declares <0.18)"},
            {"versions": ">=3.5.0,<4.0.0", **_SWIFT3,
             "requirements": [*_SWIFT3["requirements"], "math-verify==0.5.2"],
             "overrides": ["transformers==4.52.4", "peft==0.15.2", "trl==0.19.1"],
             "note": "3.5+ imports trl.extras.profiling (trl >= 0.16) on its training path; the newest "
                     "transformers/peft/trl inside every range 3.5-3.12 declares (<4.53, <0.16, <0.20); "
                     "GRPO from 3.6 needs math_verify (3.9 names 0.5.2)"},
            {"versions": ">=4.0.0,<5.0.0", "python": "3.11",
             "requirements": ["msgspec"],
             "note": "ft-harness[swift]: ms-swift 4.x resolves with its own metadata (uv: seconds)"},
        ],
    },
    "llamafactory": {
        "distribution": "llamafactory",
        "adapter": "llamafactory",
        "aliases": ["llama-factory", "LLaMA-Factory"],
        "ranges": [
            {"versions": ">=0.9.4,<1.0.0", "python": "3.11",
             "requirements": ["torch==2.14.1", "torchvision==0.29.1"],
             "overrides": ["torch==2.14.1"],
             "note": "tox -e llamafactory: PyPI's torchvision does not import beside the CPU torch 2.13.0 wheel; "
                     "0.9.4/0.9.5 resolve with their own metadata beside ft-harness's ranges (transformers "
                     "4.51-4.57.1 / 4.55-5.6, trl 0.18-0.24)"},
            {"versions": ">=0.9.1,<0.9.2", **_LLAMAFACTORY_OLD,
             "overrides": [*_LLAMAFACTORY_OLD["overrides"], "transformers==4.45.2"],
             "note": "0.9.1 declares accelerate<=1.0.1 (checked again at import) beside transformers<=4.46.1, "
                     "whose 4.46 Trainer refuses data_seed below accelerate 1.1.0 (NotImplementedError): "
                     "transformers 4.45.2, inside 0.9.1's range; else as 0.9.0-0.9.3"},
            {"versions": ">=0.9.0,<0.9.4", **_LLAMAFACTORY_OLD,
             "note": "0.9.0-0.9.3 cap trl at 0.9.6 (and 0.9.0-0.9.2 peft at 0.12, transformers at 4.45/4.46.1/"
                     "4.49): outside ft-harness's floors, so ft-harness goes in --no-deps and LLaMA-Factory "
                     "resolves its own era libraries"},
        ],
    },
    "transformers": {
        "distribution": "transformers",
        "adapter": "transformers",
        "aliases": [],
        "ranges": [
            {"versions": ">=4.49.0,<6.0.0", "python": "3.11",
             "note": "plain Trainer/PEFT/TRL; ft-harness's own dependency range (transformers>=4.49,<6)"},
            {"versions": ">=4.47.0,<4.49.0", "python": "3.11", "harness_no_deps": True,
             "requirements": ["peft==0.14.0", "trl==0.13.0", *_TRANSFORMERS_OLD],
             "note": "below ft-harness's transformers floor: ft-harness --no-deps, era libraries (trl 0.12.2 "
                     "declares transformers<4.47: trl 0.13.0 / peft 0.14.0, December 2024)"},
            {"versions": ">=4.40.0,<4.47.0", "python": "3.11", "harness_no_deps": True,
             "requirements": ["peft==0.13.2", "trl==0.12.2", *_TRANSFORMERS_OLD],
             "note": "below ft-harness's transformers floor: ft-harness --no-deps, era libraries"},
        ],
    },
    "trl": {
        "distribution": "trl",
        "adapter": "transformers",
        "aliases": ["TRL"],
        "ranges": [
            {"versions": ">=1.0.0,<2.0.0", "python": "3.11",
             "requirements": ["transformers==5.23.0", "peft==0.21.2"],
             "note": "TRL swept under the plain transformers adapter, transformers and peft held at the default lock's "
                     "5.23.0 / 0.21.2 (every TRL 1.x declares transformers>=4.56.2), so a verdict that flips between "
                     "two releases is TRL's doing (its DPOTrainer / GRPOTrainer reference model)"},
        ],
    },
    "unsloth": {
        "distribution": "unsloth",
        "adapter": "unsloth",
        "aliases": [],
        "ranges": [
            {"versions": ">=2024.1", "python": "3.11",
             "requirements": ["torch==2.14.1", "torchvision==0.29.1", "unsloth_zoo<={version}"],
             "overrides": ["torch==2.14.1"],
             "note": "tox -e unsloth's pair (unsloth checks torchvision against torch; PyPI's does not import beside "
                     "the CPU torch 2.13.0 wheel); unsloth_zoo is released with unsloth under the same date-based "
                     "versions, so <= the swept release is the zoo of its day (each unsloth also declares a floor)"},
        ],
    },
    "axolotl": {
        "distribution": "axolotl",
        "adapter": "axolotl",
        "aliases": [],
        "ranges": [
            {"versions": ">=0.20.0,<1.0.0", "python": "3.12", "requirements": ["multiprocess==0.70.18"],
             "note": "tox -e axolotl's recipe: axolotl >= 0.20 needs Python 3.12; multiprocess 0.70.19 (datasets 5's "
                     "pick) breaks datasets.save_to_disk on Python 3.12.1 (fork_exec's argument list)"},
            {"versions": ">=0.10.0,<0.20.0", "python": "3.11", "requirements": ["multiprocess==0.70.18"],
             "note": "the last releases on Python 3.11 (the index offers 0.19.0 and older to 3.11); the same "
                     "multiprocess pin: 0.70.19's fork_exec call breaks on this machine's 3.11 too (measured on "
                     "0.19.0: 'fork_exec() takes exactly 23 arguments (21 given)' in every run)"},
        ],
    },
    "simpletuner": {
        "distribution": "simpletuner",
        "adapter": "simpletuner",
        "aliases": ["SimpleTuner"],
        "ranges": [
            {"versions": ">=4.0.0,<5.0.0", "python": "3.12",
             "requirements": ["torchvision==0.28.*", "torchaudio==2.11.*", "transformers==5.22.*"],
             "note": "tox -e simpletuner (Python 3.12)"},
        ],
    },
}
