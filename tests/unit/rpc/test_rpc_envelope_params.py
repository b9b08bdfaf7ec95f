"""The envelope's MAIL FROM fields travel unchanged: smtps's commit -> stored envelope -> smtpc."""

from __future__ import annotations

import pytest

from meta1py.envelope import BODY_TYPES, DSN_RETS, envelope_params
from meta1py.queue.envelopes import Envelope, Recipient
from meta1py.queue.ids import new_queue_id
from meta1py.rpc.codec import decode_frame, encode_frame
from meta1py.rpc.errors import RpcEncodeError
from meta1py.rpc.messages import (
    QueueEnvelopeCommitRequest,
    QueueRecipientValue,
    SmarRouteValue,
    SmtpcDeliveryRequest,
)

_ROUTE = SmarRouteValue(
    status="ok", transport="maildir", destination="local", hosts=(), path="/var/mail/x", reply=None
)


def _commit(**overrides: object) -> QueueEnvelopeCommitRequest:
    fields: dict[str, object] = {
        "qid": new_queue_id(),
        "sender": "alice@example.org",
        "recipients": (QueueRecipientValue(address="bob@example.net", orcpt=None, notify=None),),
        "size": 1234,
        "envid": "ENV-1",
        "ret": "HDRS",
        "body": "BINARYMIME",
        "smtputf8": True,
        "client_address": "192.0.2.1",
        "client_helo": "client.example.org",
        "arrival_time": 0.0,
        **overrides,
    }
    return QueueEnvelopeCommitRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ret", "body"), [("HDRS", "BINARYMIME"), (None, "7BIT"), ("FULL", "8BITMIME")])
def test_fields_reach_smtpc_as_smtps_sent_them(ret: str | None, body: str) -> None:
    req = _commit(ret=ret, body=body)
    env = Envelope(
        **envelope_params(req),
        qid=req.qid,
        arrival_time=1.0,
        recipients=(Recipient(idx=0, address="bob@example.net"),),
    )
    delivery = SmtpcDeliveryRequest(**envelope_params(env), qid=env.qid, recipients=(), route=_ROUTE)
    # Over the wire and back, as smtpc receives it.
    received = decode_frame(encode_frame("call", 1, delivery)[4:]).message
    assert isinstance(received, SmtpcDeliveryRequest)
    got = (received.sender, received.size, received.envid, received.ret, received.body, received.smtputf8)
    assert got == ("alice@example.org", 1234, "ENV-1", ret, body, True)


def test_the_wire_refuses_words_outside_the_vocabulary() -> None:
    assert BODY_TYPES == {"7BIT", "8BITMIME", "BINARYMIME"}
    assert DSN_RETS == {"FULL", "HDRS"}
    with pytest.raises(RpcEncodeError, match="body"):
        encode_frame("call", 1, _commit(body="8BIT"))
    with pytest.raises(RpcEncodeError, match="ret"):
        encode_frame("call", 1, _commit(ret="NONE"))
