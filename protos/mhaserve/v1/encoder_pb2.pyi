from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MEAN: _ClassVar[Pooling]
    POOLING_CLS: _ClassVar[Pooling]
    POOLING_MAX: _ClassVar[Pooling]
    POOLING_MEAN_SQRT_LEN_TOKENS: _ClassVar[Pooling]
    POOLING_WEIGHTEDMEAN: _ClassVar[Pooling]
    POOLING_LASTTOKEN: _ClassVar[Pooling]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]

class HeadReduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEAD_REDUCTION_UNSPECIFIED: _ClassVar[HeadReduction]
    HEAD_REDUCTION_NONE: _ClassVar[HeadReduction]
    HEAD_REDUCTION_MEAN: _ClassVar[HeadReduction]
    HEAD_REDUCTION_MAX: _ClassVar[HeadReduction]

class AttentionBlock(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTENTION_BLOCK_UNSPECIFIED: _ClassVar[AttentionBlock]
    ATTENTION_BLOCK_FULL: _ClassVar[AttentionBlock]
    ATTENTION_BLOCK_QUERY_TO_DOCUMENT: _ClassVar[AttentionBlock]
    ATTENTION_BLOCK_DOCUMENT_TO_QUERY: _ClassVar[AttentionBlock]
POOLING_UNSPECIFIED: Pooling
POOLING_MEAN: Pooling
POOLING_CLS: Pooling
POOLING_MAX: Pooling
POOLING_MEAN_SQRT_LEN_TOKENS: Pooling
POOLING_WEIGHTEDMEAN: Pooling
POOLING_LASTTOKEN: Pooling
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
HEAD_REDUCTION_UNSPECIFIED: HeadReduction
HEAD_REDUCTION_NONE: HeadReduction
HEAD_REDUCTION_MEAN: HeadReduction
HEAD_REDUCTION_MAX: HeadReduction
ATTENTION_BLOCK_UNSPECIFIED: AttentionBlock
ATTENTION_BLOCK_FULL: AttentionBlock
ATTENTION_BLOCK_QUERY_TO_DOCUMENT: AttentionBlock
ATTENTION_BLOCK_DOCUMENT_TO_QUERY: AttentionBlock

class AttentionSelection(_message.Message):
    __slots__ = ("layers", "heads", "reduce_heads", "rollout", "rows", "block")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_HEADS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    reduce_heads: HeadReduction
    rollout: bool
    rows: _containers.RepeatedScalarFieldContainer[int]
    block: AttentionBlock
    def __init__(self, layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., reduce_heads: _Optional[_Union[HeadReduction, str]] = ..., rollout: _Optional[bool] = ..., rows: _Optional[_Iterable[int]] = ..., block: _Optional[_Union[AttentionBlock, str]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("id", "inputs", "pooling", "normalize", "truncate", "return_tokens", "return_token_embeddings", "attention", "model", "prompt_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKEN_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    pooling: Pooling
    normalize: bool
    truncate: bool
    return_tokens: bool
    return_token_embeddings: bool
    attention: AttentionSelection
    model: str
    prompt_name: str
    def __init__(self, id: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., normalize: _Optional[bool] = ..., truncate: _Optional[bool] = ..., return_tokens: _Optional[bool] = ..., return_token_embeddings: _Optional[bool] = ..., attention: _Optional[_Union[AttentionSelection, _Mapping]] = ..., model: _Optional[str] = ..., prompt_name: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("id", "text", "start", "end")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    start: int
    end: int
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class TokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "code_name", "message", "type")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    code: int
    code_name: str
    message: str
    type: str
    def __init__(self, code: _Optional[int] = ..., code_name: _Optional[str] = ..., message: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    def __init__(self, tokens: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("id", "model", "embeddings", "tokens", "token_embeddings", "attention", "attention_layers", "attention_heads", "usage", "error", "attention_reduce_heads", "attention_rollout", "attention_rows")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_HEADS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_REDUCE_HEADS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_ROWS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenList]
    token_embeddings: _containers.RepeatedCompositeFieldContainer[Tensor]
    attention: _containers.RepeatedCompositeFieldContainer[Tensor]
    attention_layers: _containers.RepeatedScalarFieldContainer[int]
    attention_heads: _containers.RepeatedScalarFieldContainer[int]
    usage: Usage
    error: Error
    attention_reduce_heads: HeadReduction
    attention_rollout: bool
    attention_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., tokens: _Optional[_Iterable[_Union[TokenList, _Mapping]]] = ..., token_embeddings: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., attention: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., attention_layers: _Optional[_Iterable[int]] = ..., attention_heads: _Optional[_Iterable[int]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., attention_reduce_heads: _Optional[_Union[HeadReduction, str]] = ..., attention_rollout: _Optional[bool] = ..., attention_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("inputs", "truncate", "model")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    truncate: bool
    model: str
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., truncate: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("model", "tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    tokens: _containers.RepeatedCompositeFieldContainer[TokenList]
    def __init__(self, model: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[TokenList, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "d_model", "embedding_dim", "n_layers", "n_heads", "max_len", "pooling", "normalize", "provider", "precision", "graph", "task", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_HEADS_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    d_model: int
    embedding_dim: int
    n_layers: int
    n_heads: int
    max_len: int
    pooling: str
    normalize: bool
    provider: str
    precision: str
    graph: str
    task: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., d_model: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., n_layers: _Optional[int] = ..., n_heads: _Optional[int] = ..., max_len: _Optional[int] = ..., pooling: _Optional[str] = ..., normalize: _Optional[bool] = ..., provider: _Optional[str] = ..., precision: _Optional[str] = ..., graph: _Optional[str] = ..., task: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("id", "model", "query", "documents", "raw_scores", "truncate", "top_n", "return_tokens", "attention")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    query: str
    documents: _containers.RepeatedScalarFieldContainer[str]
    raw_scores: bool
    truncate: bool
    top_n: int
    return_tokens: bool
    attention: AttentionSelection
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., query: _Optional[str] = ..., documents: _Optional[_Iterable[str]] = ..., raw_scores: _Optional[bool] = ..., truncate: _Optional[bool] = ..., top_n: _Optional[int] = ..., return_tokens: _Optional[bool] = ..., attention: _Optional[_Union[AttentionSelection, _Mapping]] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class RerankResult(_message.Message):
    __slots__ = ("index", "score", "tokens", "query_span", "document_span", "attention")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUERY_SPAN_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_SPAN_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    tokens: TokenList
    query_span: Span
    document_span: Span
    attention: Tensor
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., tokens: _Optional[_Union[TokenList, _Mapping]] = ..., query_span: _Optional[_Union[Span, _Mapping]] = ..., document_span: _Optional[_Union[Span, _Mapping]] = ..., attention: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("id", "model", "results", "usage", "attention_layers", "attention_heads", "attention_reduce_heads", "attention_rollout", "attention_rows", "attention_block")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_HEADS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_REDUCE_HEADS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_ROWS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_BLOCK_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    results: _containers.RepeatedCompositeFieldContainer[RerankResult]
    usage: Usage
    attention_layers: _containers.RepeatedScalarFieldContainer[int]
    attention_heads: _containers.RepeatedScalarFieldContainer[int]
    attention_reduce_heads: HeadReduction
    attention_rollout: bool
    attention_rows: _containers.RepeatedScalarFieldContainer[int]
    attention_block: AttentionBlock
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[RerankResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., attention_layers: _Optional[_Iterable[int]] = ..., attention_heads: _Optional[_Iterable[int]] = ..., attention_reduce_heads: _Optional[_Union[HeadReduction, str]] = ..., attention_rollout: _Optional[bool] = ..., attention_rows: _Optional[_Iterable[int]] = ..., attention_block: _Optional[_Union[AttentionBlock, str]] = ...) -> None: ...

class PredictInput(_message.Message):
    __slots__ = ("text", "text_pair")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_pair: str
    def __init__(self, text: _Optional[str] = ..., text_pair: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("id", "model", "inputs", "raw_scores", "truncate", "top_k")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[PredictInput]
    raw_scores: bool
    truncate: bool
    top_k: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[PredictInput, _Mapping]]] = ..., raw_scores: _Optional[bool] = ..., truncate: _Optional[bool] = ..., top_k: _Optional[int] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("id", "model", "predictions", "usage")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    usage: Usage
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...
