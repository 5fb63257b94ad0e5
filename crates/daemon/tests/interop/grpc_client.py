"""An independent gRPC client for corrald: python grpcio, not tonic.

Run by crates/daemon/tests/grpc_interop.rs against a live corrald, once over the unix socket
with grpcio's default :authority and once over TLS with a bearer token. It compiles the
contract's .proto files with grpcio-tools' bundled protoc, then, through the given target:
lists services by reflection v1 and v1alpha, asks Health/Check of every listed service, checks
that each corral service is routed, creates a stopped VM and lists VMs. Any failure exits
non-zero with the reason on stderr.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_tools import protoc
import grpc_tools

TIMEOUT = 20


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def compile_protos(proto_root, out):
    """Generates Python modules for every corral/v1/*.proto with the reference compiler."""
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.glob("corral/v1/*.proto"))
    if not files:
        fail(f"no .proto files under {proto_root}/corral/v1")
    code = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if code != 0:
        fail(f"protoc could not compile {files}")
    sys.path.insert(0, str(out))
    return [importlib.import_module(f[: -len(".proto")].replace("/", ".") + "_pb2") for f in files]


def declared_services(modules):
    return sorted(
        f"{m.DESCRIPTOR.package}.{name}" for m in modules for name in m.DESCRIPTOR.services_by_name
    )


def reflect(channel, metadata, version, service_for_symbol):
    """Lists services by reflection `version`, and fetches the file defining a service.

    grpcio-reflection ships only v1alpha messages; v1's are the same on the wire (same fields
    and numbers), so both versions are called with them and differ only in the method path.
    """
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=v1alpha_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=v1alpha_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        v1alpha_pb2.ServerReflectionRequest(list_services=""),
        v1alpha_pb2.ServerReflectionRequest(file_containing_symbol=service_for_symbol),
    ]
    replies = list(call(iter(requests), metadata=metadata, timeout=TIMEOUT))
    if len(replies) != 2:
        fail(f"reflection {version}: {len(replies)} replies to 2 requests")
    listed = sorted(s.name for s in replies[0].list_services_response.service)
    files = replies[1].file_descriptor_response.file_descriptor_proto
    if not files:
        fail(f"reflection {version}: no file for {service_for_symbol}: {replies[1]}")
    return listed


def check_health(channel, metadata, services):
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in [""] + services:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=TIMEOUT)
        if reply.status != serving:
            fail(f"Health/Check({service!r}) is {reply.status}, not SERVING")
    try:
        health.Check(health_pb2.HealthCheckRequest(service="corral.v1.NoSuchService"), metadata=metadata, timeout=TIMEOUT)
        fail("Health/Check of an unknown service answered")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            fail(f"Health/Check of an unknown service: {e.code()} {e.details()}")


def check_routed(channel, metadata, modules):
    """Calls one method of every declared service with an empty request: a service that is
    declared but not routed answers UNIMPLEMENTED; anything else proves a handler ran."""
    preferred = ["List", "Get", "Version", "Find"]
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            methods = {m.name: m for m in service.methods}
            name = next((p for p in preferred if p in methods), service.methods[0].name)
            method = methods[name]
            path = f"/{service.full_name}/{name}"
            kind = (
                ("stream" if method.client_streaming else "unary")
                + "_"
                + ("stream" if method.server_streaming else "unary")
            )
            call = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
            request = iter([]) if method.client_streaming else b""
            try:
                reply = call(request, metadata=metadata, timeout=5)
                if method.server_streaming:
                    for _ in reply:
                        break
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED):
                    fail(f"{path}: {e.code()} {e.details()}")


def vms(channel, metadata, corral_pb2, corral_grpc, name, kernel):
    stub = corral_grpc.VmServiceStub(channel)
    vm = corral_pb2.Vm(
        metadata=corral_pb2.ObjectMeta(name=name, labels={"via": "grpcio"}),
        spec=corral_pb2.VmSpec(
            memory_bytes=64 << 20,
            power=corral_pb2.POWER_STOPPED,
            boot=corral_pb2.Boot(kernel=corral_pb2.KernelBoot(kernel=kernel, cmdline="console=ttyS0")),
        ),
    )
    created = stub.Create(corral_pb2.CreateVmRequest(vm=vm), metadata=metadata, timeout=TIMEOUT)
    if created.metadata.name != name or len(created.metadata.uid) != 36:
        fail(f"Create returned {created}")
    listed = stub.List(corral_pb2.ListVmsRequest(label_selector="via=grpcio"), metadata=metadata, timeout=TIMEOUT)
    names = [v.metadata.name for v in listed.items]
    if name not in names:
        fail(f"List does not show {name}: {names}")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proto-root", required=True, type=pathlib.Path)
    parser.add_argument("--target", required=True, help="unix:///path or host:port")
    parser.add_argument("--ca", help="PEM CA certificate: connect with TLS")
    parser.add_argument("--token", help="bearer token sent as authorization metadata")
    parser.add_argument("--vm", required=True, help="name of the VM to create")
    parser.add_argument("--kernel", required=True, help="kernel file the VM names")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        modules = compile_protos(args.proto_root, pathlib.Path(out))
        corral_pb2 = importlib.import_module("corral.v1.corral_pb2")
        corral_grpc = importlib.import_module("corral.v1.corral_pb2_grpc")
        declared = declared_services(modules)

        if args.ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=pathlib.Path(args.ca).read_bytes())
            channel = grpc.secure_channel(args.target, credentials)
        else:
            channel = grpc.insecure_channel(args.target)
        metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

        with channel:
            if args.token:
                # Evidence that the token is what lets the calls below through.
                try:
                    corral_grpc.VmServiceStub(channel).List(corral_pb2.ListVmsRequest(), timeout=TIMEOUT)
                    fail("List without a token answered")
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                        fail(f"List without a token: {e.code()} {e.details()}")

            listed = {v: reflect(channel, metadata, v, "corral.v1.VmService") for v in ("v1", "v1alpha")}
            if listed["v1"] != listed["v1alpha"]:
                fail(f"reflection v1 lists {listed['v1']}, v1alpha {listed['v1alpha']}")
            wanted = declared + [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            if sorted(wanted) != listed["v1"]:
                fail(f"reflection lists {listed['v1']}, expected {sorted(wanted)}")
            check_health(channel, metadata, listed["v1"])
            check_routed(channel, metadata, modules)
            names = vms(channel, metadata, corral_pb2, corral_grpc, args.vm, args.kernel)

    print(f"ok {args.target}: {len(listed['v1'])} services by reflection v1 and v1alpha, all SERVING; VMs {names}")


if __name__ == "__main__":
    main()
