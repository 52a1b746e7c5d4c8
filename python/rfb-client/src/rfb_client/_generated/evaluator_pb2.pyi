# Generated from proto/proto/rfb/v1/evaluator.proto by python/rfb-client/generate_stubs.py; do not edit.
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_STATE_DICT: _ClassVar[ModelFormat]
    MODEL_FORMAT_TORCHSCRIPT: _ClassVar[ModelFormat]

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TEST: _ClassVar[Split]
    SPLIT_VALIDATION: _ClassVar[Split]
    SPLIT_TRAIN: _ClassVar[Split]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]
    PRECISION_FP32_FAST: _ClassVar[Precision]

class AttackKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTACK_KIND_UNSPECIFIED: _ClassVar[AttackKind]
    CLEAN: _ClassVar[AttackKind]
    FGSM: _ClassVar[AttackKind]
    PGD: _ClassVar[AttackKind]
    CW_INF: _ClassVar[AttackKind]
    AUTOATTACK_STANDARD: _ClassVar[AttackKind]
    AUTOATTACK_RAND: _ClassVar[AttackKind]
    AUTOATTACK_CUSTOM: _ClassVar[AttackKind]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_STATE_DICT: ModelFormat
MODEL_FORMAT_TORCHSCRIPT: ModelFormat
SPLIT_UNSPECIFIED: Split
SPLIT_TEST: Split
SPLIT_VALIDATION: Split
SPLIT_TRAIN: Split
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_BF16: Precision
PRECISION_FP32_FAST: Precision
ATTACK_KIND_UNSPECIFIED: AttackKind
CLEAN: AttackKind
FGSM: AttackKind
PGD: AttackKind
CW_INF: AttackKind
AUTOATTACK_STANDARD: AttackKind
AUTOATTACK_RAND: AttackKind
AUTOATTACK_CUSTOM: AttackKind

class UploadHeader(_message.Message):
    __slots__ = ("name", "dataset", "format", "architecture", "mean", "std", "class_names", "method", "size", "sha256", "file_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset: str
    format: ModelFormat
    architecture: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    method: str
    size: int
    sha256: str
    file_name: str
    def __init__(self, name: _Optional[str] = ..., dataset: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., architecture: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., class_names: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., file_name: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("versions", "device", "uploads_enabled", "max_upload_bytes", "max_uploads_per_client", "max_upload_bytes_per_client", "model_code_protection", "your_upload_prefix")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOADS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_CODE_PROTECTION_FIELD_NUMBER: _ClassVar[int]
    YOUR_UPLOAD_PREFIX_FIELD_NUMBER: _ClassVar[int]
    versions: Versions
    device: str
    uploads_enabled: bool
    max_upload_bytes: int
    max_uploads_per_client: int
    max_upload_bytes_per_client: int
    model_code_protection: str
    your_upload_prefix: str
    def __init__(self, versions: _Optional[_Union[Versions, _Mapping]] = ..., device: _Optional[str] = ..., uploads_enabled: _Optional[bool] = ..., max_upload_bytes: _Optional[int] = ..., max_uploads_per_client: _Optional[int] = ..., max_upload_bytes_per_client: _Optional[int] = ..., model_code_protection: _Optional[str] = ..., your_upload_prefix: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "problems")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "num_classes", "input_shape", "class_names", "dataset", "method", "seed", "epoch", "weights_sha256", "parameter_count", "manifest_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    num_classes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    method: str
    seed: int
    epoch: int
    weights_sha256: str
    parameter_count: int
    manifest_json: str
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., num_classes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., method: _Optional[str] = ..., seed: _Optional[int] = ..., epoch: _Optional[int] = ..., weights_sha256: _Optional[str] = ..., parameter_count: _Optional[int] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class AttackSpec(_message.Message):
    __slots__ = ("kind", "eps", "steps", "step_size", "restarts", "kappa", "seed", "components")
    KIND_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    KAPPA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    kind: AttackKind
    eps: float
    steps: int
    step_size: float
    restarts: int
    kappa: float
    seed: int
    components: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[AttackKind, str]] = ..., eps: _Optional[float] = ..., steps: _Optional[int] = ..., step_size: _Optional[float] = ..., restarts: _Optional[int] = ..., kappa: _Optional[float] = ..., seed: _Optional[int] = ..., components: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "dataset", "split", "examples_per_class", "attacks", "batch_size", "precision", "shard", "attack_names", "eps", "step_size", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    ATTACKS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ATTACK_NAMES_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    dataset: str
    split: Split
    examples_per_class: int
    attacks: _containers.RepeatedCompositeFieldContainer[AttackSpec]
    batch_size: int
    precision: Precision
    shard: Shard
    attack_names: str
    eps: float
    step_size: float
    seed: int
    def __init__(self, model: _Optional[str] = ..., dataset: _Optional[str] = ..., split: _Optional[_Union[Split, str]] = ..., examples_per_class: _Optional[int] = ..., attacks: _Optional[_Iterable[_Union[AttackSpec, _Mapping]]] = ..., batch_size: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ..., attack_names: _Optional[str] = ..., eps: _Optional[float] = ..., step_size: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("index", "count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class EvaluateEvent(_message.Message):
    __slots__ = ("queued", "progress", "result", "done")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    queued: QueuePosition
    progress: Progress
    result: AttackResult
    done: Done
    def __init__(self, queued: _Optional[_Union[QueuePosition, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[AttackResult, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ...) -> None: ...

class QueuePosition(_message.Message):
    __slots__ = ("ahead",)
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    ahead: int
    def __init__(self, ahead: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("attack", "attack_index", "examples_done", "examples_total", "component", "component_index", "components")
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    ATTACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    attack: str
    attack_index: int
    examples_done: int
    examples_total: int
    component: str
    component_index: int
    components: int
    def __init__(self, attack: _Optional[str] = ..., attack_index: _Optional[int] = ..., examples_done: _Optional[int] = ..., examples_total: _Optional[int] = ..., component: _Optional[str] = ..., component_index: _Optional[int] = ..., components: _Optional[int] = ...) -> None: ...

class ComponentResult(_message.Message):
    __slots__ = ("name", "seconds", "attacked", "robust_after")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTACKED_FIELD_NUMBER: _ClassVar[int]
    ROBUST_AFTER_FIELD_NUMBER: _ClassVar[int]
    name: str
    seconds: float
    attacked: int
    robust_after: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., seconds: _Optional[float] = ..., attacked: _Optional[int] = ..., robust_after: _Optional[_Iterable[int]] = ...) -> None: ...

class ClassResult(_message.Message):
    __slots__ = ("class_name", "correct", "total", "predicted_as")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AS_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    correct: int
    total: int
    predicted_as: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, class_name: _Optional[str] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., predicted_as: _Optional[_Iterable[int]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("average", "worst", "worst_10_percent", "nsd")
    AVERAGE_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    WORST_10_PERCENT_FIELD_NUMBER: _ClassVar[int]
    NSD_FIELD_NUMBER: _ClassVar[int]
    average: float
    worst: float
    worst_10_percent: float
    nsd: float
    def __init__(self, average: _Optional[float] = ..., worst: _Optional[float] = ..., worst_10_percent: _Optional[float] = ..., nsd: _Optional[float] = ...) -> None: ...

class SanityFlags(_message.Message):
    __slots__ = ("randomised", "probabilities_not_logits", "zero_gradient_fraction", "possible_gradient_masking", "dynamic", "dlr_zero_gradient_points", "square_robust_accuracy_drop", "square_lowered_robust_accuracy", "targets_requested", "targets_used")
    RANDOMISED_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_NOT_LOGITS_FIELD_NUMBER: _ClassVar[int]
    ZERO_GRADIENT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    POSSIBLE_GRADIENT_MASKING_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_FIELD_NUMBER: _ClassVar[int]
    DLR_ZERO_GRADIENT_POINTS_FIELD_NUMBER: _ClassVar[int]
    SQUARE_ROBUST_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    SQUARE_LOWERED_ROBUST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TARGETS_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TARGETS_USED_FIELD_NUMBER: _ClassVar[int]
    randomised: bool
    probabilities_not_logits: bool
    zero_gradient_fraction: float
    possible_gradient_masking: bool
    dynamic: bool
    dlr_zero_gradient_points: int
    square_robust_accuracy_drop: float
    square_lowered_robust_accuracy: bool
    targets_requested: int
    targets_used: int
    def __init__(self, randomised: _Optional[bool] = ..., probabilities_not_logits: _Optional[bool] = ..., zero_gradient_fraction: _Optional[float] = ..., possible_gradient_masking: _Optional[bool] = ..., dynamic: _Optional[bool] = ..., dlr_zero_gradient_points: _Optional[int] = ..., square_robust_accuracy_drop: _Optional[float] = ..., square_lowered_robust_accuracy: _Optional[bool] = ..., targets_requested: _Optional[int] = ..., targets_used: _Optional[int] = ...) -> None: ...

class Versions(_message.Message):
    __slots__ = ("evaluator", "libtorch", "proto")
    EVALUATOR_FIELD_NUMBER: _ClassVar[int]
    LIBTORCH_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    evaluator: str
    libtorch: str
    proto: str
    def __init__(self, evaluator: _Optional[str] = ..., libtorch: _Optional[str] = ..., proto: _Optional[str] = ...) -> None: ...

class AttackResult(_message.Message):
    __slots__ = ("attack", "attack_name", "classes", "metrics", "sanity", "device", "elapsed_seconds", "cached", "versions", "model", "weights_sha256", "dataset", "split", "examples_per_class", "precision", "components", "shard")
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    ATTACK_NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SANITY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    attack: AttackSpec
    attack_name: str
    classes: _containers.RepeatedCompositeFieldContainer[ClassResult]
    metrics: Metrics
    sanity: SanityFlags
    device: str
    elapsed_seconds: float
    cached: bool
    versions: Versions
    model: str
    weights_sha256: str
    dataset: str
    split: Split
    examples_per_class: int
    precision: Precision
    components: _containers.RepeatedCompositeFieldContainer[ComponentResult]
    shard: Shard
    def __init__(self, attack: _Optional[_Union[AttackSpec, _Mapping]] = ..., attack_name: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ClassResult, _Mapping]]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., sanity: _Optional[_Union[SanityFlags, _Mapping]] = ..., device: _Optional[str] = ..., elapsed_seconds: _Optional[float] = ..., cached: _Optional[bool] = ..., versions: _Optional[_Union[Versions, _Mapping]] = ..., model: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., dataset: _Optional[str] = ..., split: _Optional[_Union[Split, str]] = ..., examples_per_class: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., components: _Optional[_Iterable[_Union[ComponentResult, _Mapping]]] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("elapsed_seconds",)
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    elapsed_seconds: float
    def __init__(self, elapsed_seconds: _Optional[float] = ...) -> None: ...
