// grpc-java (Debian's libgrpc-java, Netty transport) with its default options
// against a live agent.
//
// Usage: java GrpcClient TARGET NETWORK_ID OVERLAY CA CERT KEY
// TARGET is `host:port` of the agent's mutual-TLS listener; CA CERT KEY are
// PEM files. Stubs come from protoc with the grpc-java plugin: the fan API
// from proto/, health, reflection v1 and google.rpc from the descriptor sets
// the agent itself serves. Does the same calls as grpc_client.py and prints
// the same JSON on stdout.
//
// No unix socket here: grpc-java reaches one only through Netty's native
// epoll transport, which Debian does not ship.

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import dev.fan.agent.v1.AllocateAddressRequest;
import dev.fan.agent.v1.CreateNetworkRequest;
import dev.fan.agent.v1.CreateNetworkResponse;
import dev.fan.agent.v1.FanAgentServiceGrpc;
import dev.fan.agent.v1.GetAgentInfoRequest;
import dev.fan.agent.v1.ListAllocationsRequest;
import dev.fan.agent.v1.NetworkSpec;
import dev.fan.agent.v1.Owner;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.protobuf.StatusProto;
import io.grpc.reflection.v1.ServerReflectionGrpc;
import io.grpc.reflection.v1.ServerReflectionRequest;
import io.grpc.reflection.v1.ServerReflectionResponse;
import io.grpc.reflection.v1.ServiceResponse;
import io.grpc.stub.StreamObserver;
import java.io.File;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

public final class GrpcClient {
  private static final String UNDERLAY = "172.30.0.0/16";
  private static final long DEADLINE_SECONDS = 10;

  public static void main(String[] args) throws Exception {
    String target = args[0];
    String networkId = args[1];
    String overlay = args[2];
    ChannelCredentials credentials =
        TlsChannelCredentials.newBuilder()
            .trustManager(new File(args[3]))
            .keyManager(new File(args[4]), new File(args[5]))
            .build();
    ManagedChannel channel = Grpc.newChannelBuilder(target, credentials).build();
    try {
      System.out.println(report(channel, networkId, overlay));
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private static JsonObject report(ManagedChannel channel, String networkId, String overlay)
      throws Exception {
    FanAgentServiceGrpc.FanAgentServiceBlockingStub agent =
        FanAgentServiceGrpc.newBlockingStub(channel)
            .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS);
    JsonObject out = new JsonObject();
    out.addProperty("version", agent.getAgentInfo(GetAgentInfoRequest.getDefaultInstance()).getVersion());
    CreateNetworkResponse created =
        agent.createNetwork(
            CreateNetworkRequest.newBuilder()
                .setNetworkId(networkId)
                .setSpec(NetworkSpec.newBuilder().setOverlay(overlay).setUnderlay(UNDERLAY))
                .build());
    out.addProperty("slice", created.getNetwork().getStatus().getSlice());
    out.addProperty(
        "address",
        agent
            .allocateAddress(
                AllocateAddressRequest.newBuilder()
                    .setNetworkId(networkId)
                    .setOwner(Owner.newBuilder().setContainerId("java-grpc"))
                    .build())
            .getAllocation()
            .getAddress());
    JsonArray listed = new JsonArray();
    agent
        .listAllocations(ListAllocationsRequest.newBuilder().setNetworkId(networkId).build())
        .getAllocationsList()
        .forEach(a -> listed.add(a.getAddress()));
    out.add("listed", listed);
    out.add("invalid", invalidCreate(agent, networkId));

    out.addProperty(
        "health",
        HealthGrpc.newBlockingStub(channel)
            .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
            .check(HealthCheckRequest.newBuilder().setService("").build())
            .getStatus()
            .name());
    JsonArray services = new JsonArray();
    listServices(channel).stream().sorted().forEach(services::add);
    out.add("services", services);
    return out;
  }

  /** One CreateNetwork with a bad overlay: its code and google.rpc details, decoded. */
  private static JsonObject invalidCreate(
      FanAgentServiceGrpc.FanAgentServiceBlockingStub agent, String networkId) throws Exception {
    JsonObject invalid = new JsonObject();
    try {
      agent.createNetwork(
          CreateNetworkRequest.newBuilder()
              .setNetworkId(networkId + "-bad")
              .setSpec(NetworkSpec.newBuilder().setOverlay("not-a-cidr").setUnderlay(UNDERLAY))
              .build());
      throw new IllegalStateException("an overlay of not-a-cidr was accepted");
    } catch (StatusRuntimeException err) {
      invalid.addProperty("code", err.getStatus().getCode().name());
      com.google.rpc.Status status = StatusProto.fromThrowable(err);
      for (Any detail : status == null ? List.<Any>of() : status.getDetailsList()) {
        if (detail.is(ErrorInfo.class)) {
          ErrorInfo info = detail.unpack(ErrorInfo.class);
          invalid.addProperty("reason", info.getReason());
          invalid.addProperty("domain", info.getDomain());
        } else if (detail.is(BadRequest.class)) {
          JsonArray fields = new JsonArray();
          detail.unpack(BadRequest.class).getFieldViolationsList().forEach(v -> fields.add(v.getField()));
          invalid.add("fields", fields);
        }
      }
    }
    return invalid;
  }

  /** The services the agent lists by reflection v1 (a bidirectional stream). */
  private static List<String> listServices(ManagedChannel channel) throws Exception {
    CompletableFuture<List<String>> names = new CompletableFuture<>();
    StreamObserver<ServerReflectionRequest> requests =
        ServerReflectionGrpc.newStub(channel)
            .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
            .serverReflectionInfo(
                new StreamObserver<ServerReflectionResponse>() {
                  @Override
                  public void onNext(ServerReflectionResponse response) {
                    names.complete(
                        response.getListServicesResponse().getServiceList().stream()
                            .map(ServiceResponse::getName)
                            .collect(Collectors.toList()));
                  }

                  @Override
                  public void onError(Throwable err) {
                    names.completeExceptionally(err);
                  }

                  @Override
                  public void onCompleted() {
                    names.completeExceptionally(new IllegalStateException("no reply"));
                  }
                });
    requests.onNext(ServerReflectionRequest.newBuilder().setListServices("").build());
    List<String> result = names.get(DEADLINE_SECONDS, TimeUnit.SECONDS);
    requests.onCompleted();
    return result;
  }
}
