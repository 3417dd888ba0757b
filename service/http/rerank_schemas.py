"""REST wire format of the cross-encoder routes: /rerank (text-embeddings-inference's shape),
/v1/rerank (the shape Cohere, Jina, Infinity and vLLM share) and /predict (TEI's), and the
functions that format their results. Each body's `peek` gives the edge its texts, one per
sequence (data_routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from service.errors import InvalidRequest
from service.http.schemas import AttentionBody, Strict, TensorOut, TokenOut, tensor, tokens_out
from service.types import AttentionSelection, PredictRequest, PredictResult, RerankRequest, RerankResult, Span

RERANK_EXAMPLES = {
    "rank": {
        "summary": "Rank three documents against a query",
        "value": {
            "query": "What is a cross-encoder?",
            "texts": [
                "A cross-encoder reads the query and the document together.",
                "Bananas are rich in potassium.",
                "A bi-encoder embeds each text on its own.",
            ],
            "return_text": True,
        },
    },
    "query_to_document_attention": {
        "summary": "Which document tokens each query token attends to (head mean, last layer)",
        "value": {
            "query": "cross-encoder",
            "texts": ["A cross-encoder reads both texts at once."],
            "return_attention": {"layers": [5], "reduce_heads": "mean", "block": "query_to_document"},
        },
    },
}


class PairAttentionBody(AttentionBody):
    """As on /v1/embed, over each (query, document) pair, or one block of it."""

    block: Literal["full", "query_to_document", "document_to_query"] = Field(
        "full",
        description="full: the whole pair, rows and columns every token; query_to_document: rows the query's "
        "tokens, columns the document's; document_to_query: the other way round. A block chooses the rows: "
        "send rows only with full",
    )

    def to_selection(self) -> AttentionSelection:
        return AttentionSelection(
            layers=None if self.layers == "all" else tuple(self.layers),
            heads=None if self.heads == "all" else tuple(self.heads),
            reduce_heads=self.reduce_heads,
            rollout=self.rollout,
            rows=None if self.rows == "all" else tuple(self.rows),
            block=self.block,
        )


def pair_texts(query: Any, documents: Any) -> list[str]:
    """For the edge's estimate: each (query, document) sequence as one text."""
    return [query + " " + (d if isinstance(d, str) else d["text"]) for d in documents]


class TeiRerankBody(Strict):
    query: StrictStr = Field(description="the text every document is scored against")
    texts: list[StrictStr] = Field(description="the documents, at most max_inputs_per_request")
    raw_scores: StrictBool = Field(False, description="the model's logit instead of its score (sigmoid for most)")
    return_text: StrictBool = Field(False, description="each result carries its document's text")
    truncate: StrictBool = Field(True, description="cut a pair at max_len tokens; false: such a pair is an error")
    truncation_direction: Literal["right", "Right"] = Field(
        "right", description="TEI's: the end of the longer side is cut first (longest_first)"
    )
    model: StrictStr | None = Field(None, description="a served rerank model's name; default: the first")
    top_n: StrictInt | None = Field(None, description="the best n (1 or more) results only; default: every document")
    return_tokens: StrictBool = Field(False, description="each result carries its pair's tokens and spans")
    return_attention: PairAttentionBody | None = Field(None, description="each result carries its pair's attention")
    encoding: Literal["float", "base64"] = Field("float", description="how attention arrays are written")
    timeout_s: float | None = Field(None, gt=0, le=600, description="deadline for this request, seconds")

    @staticmethod
    def peek(body: Any) -> list[str]:
        return pair_texts(body["query"], body["texts"])

    def to_request(self) -> RerankRequest:
        return RerankRequest(
            query=self.query,
            documents=tuple(self.texts),
            model=self.model,
            raw_scores=self.raw_scores,
            truncate=self.truncate,
            top_n=self.top_n,
            return_tokens=self.return_tokens,
            attention=self.return_attention.to_selection() if self.return_attention is not None else None,
            timeout_s=self.timeout_s,
        )


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: StrictStr


class RerankBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Cohere's and Jina's clients send fields we have no use for

    model: StrictStr | None = Field(None, description="a served rerank model's name; default: the first")
    query: StrictStr
    documents: list[StrictStr | DocumentIn] = Field(description='strings, or objects {"text": ...}')
    top_n: StrictInt | None = Field(None, description="the best n (1 or more) results only; default: every document")
    return_documents: StrictBool = Field(False, description='each result carries {"text": its document}')
    truncate: StrictBool = Field(True, description="cut a pair at max_len tokens; false: such a pair is an error")
    timeout_s: float | None = Field(None, gt=0, le=600, description="deadline for this request, seconds")
    return_attention: PairAttentionBody | None = Field(
        None, description="mhaserve's: each result carries its pair's attention and where query and document sit"
    )
    encoding: Literal["float", "base64"] = Field("float", description="how attention arrays are written")

    @staticmethod
    def peek(body: Any) -> list[str]:
        return pair_texts(body["query"], body["documents"])

    def texts(self) -> tuple[str, ...]:
        return tuple(d if isinstance(d, str) else d.text for d in self.documents)

    def to_request(self) -> RerankRequest:
        return RerankRequest(
            query=self.query,
            documents=self.texts(),
            model=self.model,
            truncate=self.truncate,
            top_n=self.top_n,
            attention=self.return_attention.to_selection() if self.return_attention is not None else None,
            timeout_s=self.timeout_s,
        )


PredictInputs = StrictStr | list[StrictStr | list[StrictStr]]


class PredictBody(Strict):
    inputs: PredictInputs = Field(
        description='a text, a pair ["text", "text"], or a list of texts and pairs; as text-embeddings-inference '
        "reads it, a list of exactly two strings is one pair"
    )
    model: StrictStr | None = Field(None, description="a served classify or rerank model's name; default: the first")
    raw_scores: StrictBool = Field(False, description="the logits instead of the model's scores (softmax or sigmoid)")
    truncate: StrictBool = Field(True, description="cut an input at max_len tokens; false: such an input is an error")
    top_k: StrictInt | None = Field(None, description="a classify model's best k labels only; default: every label")
    timeout_s: float | None = Field(None, gt=0, le=600, description="deadline for this request, seconds")

    @staticmethod
    def peek(body: Any) -> list[str]:
        return [t if isinstance(t, str) else " ".join(t) for t in predict_items(body["inputs"])[0]]

    def to_request(self) -> tuple[PredictRequest, bool]:
        """The request, and whether the body sent one input (its answer is then one list of labels)."""
        items, single = predict_items(self.inputs)
        inputs = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                inputs.append((item,))
            elif len(item) in (1, 2):
                inputs.append(tuple(item))
            else:
                raise InvalidRequest(f"inputs[{i}] has {len(item)} texts: send a text or a pair of two")
        request = PredictRequest(
            inputs=tuple(inputs),
            model=self.model,
            raw_scores=self.raw_scores,
            truncate=self.truncate,
            top_k=self.top_k,
            timeout_s=self.timeout_s,
        )
        return request, single


def predict_items(inputs: Any) -> tuple[list, bool]:
    """TEI's reading: a string, or a list of exactly two strings, is one input; any other list a batch."""
    if isinstance(inputs, str):
        return [inputs], True
    if len(inputs) == 2 and all(isinstance(t, str) for t in inputs):
        return [inputs], True
    return list(inputs), False


# documented response shapes ---------------------------------------------------------------


class PairAttentionOut(TensorOut):
    layers: list[int]
    heads: list[int]
    reduce_heads: Literal["none", "mean", "max"]
    rollout: bool
    rows: list[int] | Literal["all"]
    block: Literal["full", "query_to_document", "document_to_query"]


class TeiRerankResult(BaseModel):
    index: int = Field(description="the document's position in texts")
    score: float
    text: str | None = Field(None, description="with return_text")
    tokens: list[TokenOut] | None = Field(None, description="with return_tokens: [CLS] query [SEP] document [SEP]")
    query_span: list[int] | None = Field(None, description="[start, end) of the query's tokens in the pair")
    document_span: list[int] | None = Field(None, description="[start, end) of the document's tokens")
    attention: PairAttentionOut | None = None


class RerankDocument(BaseModel):
    text: str


class RerankResultOut(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None
    query_span: list[int] | None = Field(None, description="with return_attention: [start, end) of the query's tokens")
    document_span: list[int] | None = Field(None, description="with return_attention: [start, end) of the document's")
    attention: PairAttentionOut | None = Field(None, description="with return_attention")


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResultOut]
    usage: RerankUsage


class LabelScoreOut(BaseModel):
    label: str
    score: float


# formatting ------------------------------------------------------------------------------


def span(s: Span) -> list[int]:
    return [s.start, s.end]


def tei_rerank_response(result: RerankResult, texts: tuple[str, ...], return_text: bool, encoding: str) -> list:
    answers = []
    for i in result.ranking():
        item: dict[str, Any] = {"index": i, "score": float(result.scores[i])}
        if return_text:
            item["text"] = texts[i]
        if result.tokens is not None:
            item["tokens"] = tokens_out([result.tokens[i]])[0]
        answers.append(item | pair_fields(result, i, encoding))
    return answers


def pair_fields(result: RerankResult, i: int, encoding: str) -> dict:
    """Document i's pair as the request asked for it, in either REST shape: where its query and
    document sit (with tokens or attention) and its attention."""
    fields: dict[str, Any] = {}
    if result.tokens is not None or result.attention is not None:
        fields["query_span"] = span(result.query_spans[i])
        fields["document_span"] = span(result.document_spans[i])
    if result.attention is not None:
        fields["attention"] = {**pair_attention_fields(result), **tensor(result.attention[i], encoding)}
    return fields


def pair_attention_fields(result: RerankResult) -> dict:
    return {
        "layers": list(result.attention_layers),
        "heads": list(result.attention_heads),
        "reduce_heads": result.attention_reduce_heads,
        "rollout": result.attention_rollout,
        "rows": "all" if result.attention_rows is None else list(result.attention_rows),
        "block": result.attention_block,
    }


def rerank_response(
    result: RerankResult, texts: tuple[str, ...], return_documents: bool, encoding: str = "float"
) -> dict:
    results = []
    for i in result.ranking():
        item: dict[str, Any] = {"index": i, "relevance_score": float(result.scores[i])}
        if return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item | pair_fields(result, i, encoding))
    return {"model": result.model, "results": results, "usage": {"total_tokens": result.usage_tokens}}


def predict_response(result: PredictResult, single: bool) -> list:
    answers = [[{"label": p.label, "score": p.score} for p in row] for row in result.predictions]
    return answers[0] if single else answers
