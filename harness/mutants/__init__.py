"""Known-bad adapters: each is the reference with exactly one documented bug put back.

They exist to prove the scenarios bite: each mutant class names the scenario modules it must fail (its ``fails``
attribute, next to the bug it puts back), :data:`MUTANTS` collects them, and ``tests/test_detection.py`` asserts
the whole matrix: every listed module fails, every other one passes. A mutant with ``fails = ()`` is a *correct
control*: a framework that does things differently but right, which must pass everything. Select one like any
adapter::

    pytest --pyargs scenarios --ft-adapter harness.mutants:ArgsJsonBeatsCli

One module per family: :mod:`~harness.mutants.args`, :mod:`~harness.mutants.saves`, :mod:`~harness.mutants.resume`,
:mod:`~harness.mutants.best`, :mod:`~harness.mutants.data`, :mod:`~harness.mutants.preference`.
"""

from __future__ import annotations

from .args import (AdapterNamesAnotherBase, ArgsJsonBeatsCli, LoraSkipsFusedExperts, SavedAlphaDiffersFromTrained,
                   TrainsWithSavedArgs)
from .saves import (ConfigDeclaresBf16, CopiesStagedCheckpoint, DeletesOldBeforeRename, FreezeByZeroGradients,
                   FreezeCoversOnlyLinearLayers, FullSaveInBf16, TrainableSetOfLinearOnly,
                   IndexWithFirstShardOnly, LmHeadRetiedOnSave, MergedEosAsList, NonAtomicSave, RankZeroShardSave,
                   RefusesQuantizedMergeByKind, ResizedRowsNotSaved, RotatesBeforeSaving, ShardedSave,
                   UnpicklesCheckpoint, WeightsOnlyIntermediateCheckpoints)
from .resume import (DataOrderRestartsOnResume, LaterEpochReplaysEpochZero, MissingTrainingStateIgnored,
                    QuantizedResumeReinitLora, ResumeDropsOptimizerState, ResumeFromIgnored, ResumeLatestByName,
                    ResumesOnlyTheNewest, RngNotRestoredOnResume, ScheduleRestartsOnResume)
from .best import (BestCheckpointMislabelled, EndCleanupKeepsOnlyBest, EvaluatesOnTrainSplit, IgnoresLoadBestAtEnd,
                  PlainTrainerBestCheckpoint, ResumeForgetsBest, RotationDeletesBest, RotationSortsByName)
from .data import (CheckpointingWithoutInputGrads, CheckpointRecomputeWithoutRng, CollatorDropsAttentionMask,
                  RouterAuxLossIgnored, RouterLossPerMicroBatch, SavedTemplateWithoutThinkingSwitch,
                  ThinkSpanNotSupervised,
                  DropsIncompleteAccumulationWindow, MeanOfMicroBatchMeans, MergeWithoutLoraScale,
                  PackingWithoutBoundaries, PadIsEosInCollator, SavedTokenizerWithoutTemplate,
                  SchedulerSteppedPerMicroBatch, TemplateWithoutGenerationPrompt)
from .preference import (FreshReferenceAdapter, PretrainedAdapterReinitialised, ReferenceInBfloat16,
                         ReferenceIsBaseUnderAdapter, ReferenceIsResumedPolicy, ReferenceReloadedFromDisk,
                         ReferenceSkipsParameterAdapters)

#: every mutant, in the detection matrix's order
_ALL = (
    ArgsJsonBeatsCli,
    QuantizedResumeReinitLora,
    ResumeDropsOptimizerState,
    WeightsOnlyIntermediateCheckpoints,
    PlainTrainerBestCheckpoint,
    RotationDeletesBest,
    NonAtomicSave,
    UnpicklesCheckpoint,
    RankZeroShardSave,
    ShardedSave,
    IndexWithFirstShardOnly,
    ScheduleRestartsOnResume,
    RngNotRestoredOnResume,
    DataOrderRestartsOnResume,
    LaterEpochReplaysEpochZero,
    MissingTrainingStateIgnored,
    ResumeFromIgnored,
    MeanOfMicroBatchMeans,
    DropsIncompleteAccumulationWindow,
    SchedulerSteppedPerMicroBatch,
    MergeWithoutLoraScale,
    PackingWithoutBoundaries,
    BestCheckpointMislabelled,
    RotationSortsByName,
    EvaluatesOnTrainSplit,
    ResumeForgetsBest,
    EndCleanupKeepsOnlyBest,
    FullSaveInBf16,
    PadIsEosInCollator,
    SavedTokenizerWithoutTemplate,
    TemplateWithoutGenerationPrompt,
    CollatorDropsAttentionMask,
    LmHeadRetiedOnSave,
    ResizedRowsNotSaved,
    TrainsWithSavedArgs,
    AdapterNamesAnotherBase,
    SavedAlphaDiffersFromTrained,
    RotatesBeforeSaving,
    RefusesQuantizedMergeByKind,
    MergedEosAsList,
    ConfigDeclaresBf16,
    ResumeLatestByName,
    ResumesOnlyTheNewest,
    DeletesOldBeforeRename,
    CopiesStagedCheckpoint,
    IgnoresLoadBestAtEnd,
    CheckpointingWithoutInputGrads,
    CheckpointRecomputeWithoutRng,
    ReferenceIsBaseUnderAdapter,
    FreshReferenceAdapter,
    ReferenceIsResumedPolicy,
    ReferenceInBfloat16,
    ReferenceReloadedFromDisk,
    ReferenceSkipsParameterAdapters,
    PretrainedAdapterReinitialised,
    FreezeCoversOnlyLinearLayers,
    TrainableSetOfLinearOnly,
    FreezeByZeroGradients,
    LoraSkipsFusedExperts,
    RouterLossPerMicroBatch,
    RouterAuxLossIgnored,
    ThinkSpanNotSupervised,
    SavedTemplateWithoutThinkingSwitch,
)

#: mutant class name -> the scenario modules it must fail (and only those), read off each class's ``fails``
MUTANTS: dict[str, tuple[str, ...]] = {cls.__name__: tuple(cls.fails) for cls in _ALL}

__all__ = [*MUTANTS, "MUTANTS"]
