'use strict';
// The entry of the injected Node.js agent, loaded before the app by
// NODE_OPTIONS="... --require <mount>/autoinstrumentation.js", with node_modules/
// beside it. Configured only by the OTEL_* environment (exporter, protocol,
// sampler, propagators, service name, resource attributes), which the SDK reads.
//
// It differs from the upstream image's register.js in two ways an operator
// injecting into every pod needs:
// - Resource detection stays on this host: no AWS, GCP, Azure or Alibaba metadata
//   lookups at start unless OTEL_NODE_RESOURCE_DETECTORS asks for them.
// - SIGTERM: spans are flushed, then the signal is let end the process. A
//   listener that only shut the SDK down would keep a plain app alive until
//   the kubelet's SIGKILL.
// A failure here never stops the app: it runs uninstrumented.

const { diag, DiagConsoleLogger, DiagLogLevel } = require('@opentelemetry/api');

// How long a flush on SIGTERM or at exit may take before the process goes on.
const SHUTDOWN_TIMEOUT_MS = 5000;

function localResourceDetectors() {
  const { envDetector, hostDetector, osDetector, processDetector } = require('@opentelemetry/resources');
  const { containerDetector } = require('@opentelemetry/resource-detector-container');
  // The env detector last: OTEL_RESOURCE_ATTRIBUTES wins over what is detected.
  return [containerDetector, hostDetector, osDetector, processDetector, envDetector];
}

function start() {
  const { NodeSDK } = require('@opentelemetry/sdk-node');
  const { getNodeAutoInstrumentations, getResourceDetectors } = require('@opentelemetry/auto-instrumentations-node');
  const resourceDetectors = process.env.OTEL_NODE_RESOURCE_DETECTORS
    ? getResourceDetectors()
    : localResourceDetectors();
  // Unset OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_PROTOCOL etc. take the SDK's
  // defaults; the operator sets them explicitly.
  const sdk = new NodeSDK({
    instrumentations: [getNodeAutoInstrumentations()],
    resourceDetectors,
  });
  sdk.start();
  return sdk;
}

function withTimeout(promise) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, SHUTDOWN_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

let sdk;
try {
  sdk = start();
} catch (error) {
  diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.ERROR);
  diag.error('OpenTelemetry agent failed to start; the app runs uninstrumented', error);
}

if (sdk) {
  let stopping;
  const shutdown = () => {
    stopping = stopping || withTimeout(sdk.shutdown()).catch((error) => {
      diag.error('OpenTelemetry agent: flushing spans failed', error);
    });
    return stopping;
  };

  const onSigterm = () => {
    shutdown().then(() => {
      process.removeListener('SIGTERM', onSigterm);
      // The app's own SIGTERM handling, if it has any, decides how to end;
      // otherwise the default action: the process ends by the signal.
      if (process.listenerCount('SIGTERM') === 0) {
        process.kill(process.pid, 'SIGTERM');
      }
    });
  };
  process.on('SIGTERM', onSigterm);
  // The event loop ran empty: flush before a normal exit.
  process.once('beforeExit', shutdown);
}
