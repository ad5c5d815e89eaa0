"""Call any econsult RPC with JSON, knowing nothing but server reflection (grpcurl's job, where
grpcurl is not at hand). Needs `pip install grpcio-reflection` (brings grpcio and protobuf).

    python3 deploy/grpc_call.py ADDRESS list
    python3 deploy/grpc_call.py ADDRESS package.Service/Method ['{"json": "request"}' [TOKEN [ON_BEHALF_OF] [NAME:VALUE ...]]]

ON_BEHALF_OF (11 digits) is sent as the `x-on-behalf-of` header: the patient call acts for that
person (a child, the giver of a fullmakt). Each NAME:VALUE is sent as a header of its own, e.g.
what the access log needs from an EHR system (`x-acting-name:Kari Nordmann`,
`x-acting-hpr:1234567`) or a practice (`x-purpose:treatment`).

It speaks reflection v1alpha, which the server serves beside v1. The answer is printed as JSON;
an error as its gRPC status code and message (exit status 1).
"""

import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(addr, method, body="{}", token=None, *rest):
    on_behalf_of = next((r for r in rest if ":" not in r), None)
    headers = [tuple(p.strip() for p in r.split(":", 1)) for r in rest if ":" in r]
    channel = grpc.insecure_channel(addr)
    db = ProtoReflectionDescriptorDatabase(channel)
    if method == "list":
        print("\n".join(db.get_services()))
        return 0
    service, name = method.rsplit("/", 1)
    m = descriptor_pool.DescriptorPool(db).FindServiceByName(service).FindMethodByName(name)
    request = message_factory.GetMessageClass(m.input_type)
    response = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=response.FromString,
    )
    metadata = [("authorization", f"Bearer {token}")] if token else []
    if on_behalf_of:
        metadata.append(("x-on-behalf-of", on_behalf_of))
    metadata.extend(headers)
    try:
        answer = call(json_format.Parse(body, request()), metadata=metadata or None, timeout=10)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(json_format.MessageToJson(answer))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
