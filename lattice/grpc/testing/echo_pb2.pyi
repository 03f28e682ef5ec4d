from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("message", "payload", "count", "fail_code", "delay_ms", "response_size")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FAIL_CODE_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_SIZE_FIELD_NUMBER: _ClassVar[int]
    message: str
    payload: bytes
    count: int
    fail_code: int
    delay_ms: int
    response_size: int
    def __init__(self, message: _Optional[str] = ..., payload: _Optional[bytes] = ..., count: _Optional[int] = ..., fail_code: _Optional[int] = ..., delay_ms: _Optional[int] = ..., response_size: _Optional[int] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("message", "payload", "index")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    message: str
    payload: bytes
    index: int
    def __init__(self, message: _Optional[str] = ..., payload: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...
