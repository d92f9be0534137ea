// Node @grpc/grpc-js with its default options against a live agent.
//
// Usage: node grpc_client.js PROTO_DIR DESCRIPTOR_SET TARGET NETWORK_ID OVERLAY [CA CERT KEY]
// The fan API is loaded from PROTO_DIR (the repository's proto/) with
// @grpc/proto-loader; health, reflection v1 and the google.rpc detail types
// from DESCRIPTOR_SET (the sets the agent itself serves). TARGET is
// `unix:/path` (insecure) or `host:port` with the mTLS files CA CERT KEY.
// Does the same calls as grpc_client.py and prints the same JSON on stdout.
'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
require('protobufjs/ext/descriptor');

const UNDERLAY = '172.30.0.0/16';
const [protoDir, descriptorSet, target, networkId, overlay, ...tls] = process.argv.slice(2);
const options = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };
const fan = grpc.loadPackageDefinition(
  loader.loadSync('fan/agent/v1/agent.proto', { ...options, includeDirs: [protoDir] }),
);
const setBytes = fs.readFileSync(descriptorSet);
const std = grpc.loadPackageDefinition(loader.loadFileDescriptorSetFromBuffer(setBytes, options));
const types = protobuf.Root.fromDescriptor(setBytes);

// Default options: no grpc.default_authority.
function channelCredentials() {
  if (!tls.length) return grpc.credentials.createInsecure();
  const [ca, cert, key] = tls.map((path) => fs.readFileSync(path));
  return grpc.credentials.createSsl(ca, key, cert);
}
const credentials = channelCredentials();

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// google.rpc.Status from the grpc-status-details-bin trailer, details unpacked.
function details(err) {
  const [bytes] = err.metadata.get('grpc-status-details-bin');
  if (!bytes) return [];
  const status = types.lookupType('google.rpc.Status').decode(bytes);
  return status.details.map((any) => {
    // Root.fromDescriptor keeps the proto field names (type_url, field_violations).
    const name = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    return { name, message: types.lookupType(name).decode(any.value) };
  });
}

function listServices(client) {
  return new Promise((resolve, reject) => {
    const stream = client.ServerReflectionInfo();
    stream.on('data', (response) => {
      resolve(response.list_services_response.service.map((s) => s.name));
      stream.end();
    });
    stream.on('error', reject);
    // Types from a descriptor set keep their proto field names (snake_case).
    stream.write({ list_services: '' });
  });
}

async function main() {
  const agent = new fan.fan.agent.v1.FanAgentService(target, credentials);
  const info = await unary(agent, 'GetAgentInfo', {});
  const created = await unary(agent, 'CreateNetwork', {
    networkId,
    spec: { overlay, underlay: UNDERLAY },
  });
  const allocated = await unary(agent, 'AllocateAddress', {
    networkId,
    owner: { containerId: 'node-grpc-js' },
  });
  const listed = await unary(agent, 'ListAllocations', { networkId });

  const invalid = {};
  try {
    await unary(agent, 'CreateNetwork', {
      networkId: `${networkId}-bad`,
      spec: { overlay: 'not-a-cidr', underlay: UNDERLAY },
    });
  } catch (err) {
    invalid.code = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
    for (const { name, message } of details(err)) {
      if (name === 'google.rpc.ErrorInfo') {
        invalid.reason = message.reason;
        invalid.domain = message.domain;
      } else if (name === 'google.rpc.BadRequest') {
        invalid.fields = message.field_violations.map((v) => v.field);
      }
    }
  }

  const health = await unary(new std.grpc.health.v1.Health(target, credentials), 'Check', {
    service: '',
  });
  const reflection = new std.grpc.reflection.v1.ServerReflection(target, credentials);
  const services = await listServices(reflection);
  console.log(
    JSON.stringify({
      version: info.version,
      slice: created.network.status.slice,
      address: allocated.allocation.address,
      listed: listed.allocations.map((a) => a.address),
      invalid,
      health: health.status,
      services: services.sort(),
    }),
  );
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
