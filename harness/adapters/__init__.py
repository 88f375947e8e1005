"""Adapters for real fine-tuning frameworks (each also an entry point in ``ft_harness.adapters``).

==================  ===========================================  ==========================
entry point         class                                        installs with
==================  ===========================================  ==========================
``transformers``    :class:`harness.adapters.transformers.TransformersAdapter`  (default dependencies)
``swift``           :class:`harness.adapters.swift.SwiftAdapter`  ``ft-harness[swift]`` (3.x or 4.x)
``llamafactory``    :class:`harness.adapters.llamafactory.LlamaFactoryAdapter`  ``ft-harness[llamafactory]``
``simpletuner``     :class:`harness.adapters.simpletuner.SimpleTunerAdapter`  ``ft-harness[simpletuner]``
``axolotl``         :class:`harness.adapters.axolotl.AxolotlAdapter`  ``ft-harness[axolotl]`` (Python 3.12)
``torchtune``       :class:`harness.adapters.torchtune.TorchtuneAdapter`  ``ft-harness[torchtune]`` (0.6.1)
==================  ===========================================  ==========================

axolotl and torchtune are built on :class:`harness.kit.ConfigFileAdapter` (torchtune in its own layout, declared
through the contract's ``checkpoints`` / ``log_history`` / ``resume_files`` / ``resume_points``); the others subclass :class:`harness.adapter.Adapter` and
use the kit's helpers (option parsing, dataset conversion, the fork runner, result collection). Each module imports
its framework only inside ``train``; argument mapping and config building are plain functions that the default
self-tests cover without the framework installed.
"""
