// The NodeSDK started from the environment only, the way an injected agent's
// `--require` entry starts it: exporter, endpoint, protocol, sampler, resource
// and propagators all come from OTEL_* variables. Loaded with
// `node --require <this file>`; the SDK packages are found through NODE_PATH
// (testbed/node-sdk/build prints the folder).
'use strict';

const { diag, DiagConsoleLogger } = require('@opentelemetry/api');
const { diagLogLevelFromString, getStringFromEnv } = require('@opentelemetry/core');
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');

// As @opentelemetry/auto-instrumentations-node's register does: SDK errors
// (a failed export among them) reach the console at OTEL_LOG_LEVEL, default info.
diag.setLogger(new DiagConsoleLogger(), {
  logLevel: diagLogLevelFromString(getStringFromEnv('OTEL_LOG_LEVEL') ?? 'info'),
});

const sdk = new NodeSDK({ instrumentations: [new HttpInstrumentation()] });
sdk.start();

// Flush on SIGTERM, then let the process end: a handler that only shut the SDK
// down would keep a plain Node app alive until SIGKILL.
process.once('SIGTERM', () => {
  sdk
    .shutdown()
    .catch((e) => diag.error('shutdown failed', e))
    .finally(() => process.exit(0));
});
