import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { CLOUDTRAIL_TARGET_PREFIX, LookupRateLimit, lookupEvents } from './cloudtrail.js';
import { KmsError, throttled, validationError } from './errors.js';
import { drawFault, type FaultRule, validateFaults } from './faults.js';
import { parseJsonObject, readBody, sendError, sendJson } from './http.js';
import type { Input } from './input.js';
import { KeyStore } from './key-store.js';
import { CRYPTOGRAPHIC_OPERATIONS, OPERATIONS, type OperationContext, READ_ONLY_OPERATIONS, UNIMPLEMENTED_OPERATIONS } from './operations.js';
import { type CloudTrailEvent, loggableFields, RequestLog } from './request-log.js';
import { StateFile } from './state-file.js';
import { type EmulatorStats, QuotaCounter } from './stats.js';

export interface EmulatorOptions {
  /** Listen address, '127.0.0.1' by default. */
  host?: string;
  /** Listen port, 0 (an ephemeral port) by default. */
  port?: number;
  /** Requests per second over all cryptographic operations, 10000 by default. 0 or Infinity means unlimited. */
  quota?: number;
  /** Fixed delay added to every KMS response, in milliseconds, 0 by default. */
  latencyMs?: number;
  /** Upper bound of a uniform random delay added on top of `latencyMs`, in milliseconds, 0 by default. */
  jitterMs?: number;
  /** JSON file that keys persist to, loaded at start when it exists. */
  statePath?: string;
  /** Default 'us-east-1'. */
  region?: string;
  /** Default '111122223333'. */
  accountId?: string;
  /** Fault rules by operation name, or '*' for every operation without its own rule. */
  faults?: Record<string, FaultRule>;
  /** File that CloudTrail-shaped events are appended to as JSON lines. */
  requestLogPath?: string;
  /** Number of events kept in memory, 100000 by default. */
  requestLogLimit?: number;
  /** CloudTrail LookupEvents requests admitted per second, 2 by default as in AWS. 0 or Infinity means unlimited. */
  lookupEventsRate?: number;
}

export type RuntimeConfig = Partial<Pick<EmulatorOptions, 'quota' | 'latencyMs' | 'jitterMs' | 'faults'>>;

export interface RunningEmulator {
  /** Base URL to pass as the KMSClient `endpoint`. */
  url: string;
  port: number;
  store: KeyStore;
  stats(): EmulatorStats;
  resetStats(): void;
  configure(patch: RuntimeConfig): void;
  requestLog(): CloudTrailEvent[];
  close(): Promise<void>;
}

const TARGET_PREFIX = 'TrentService.';
const KMS_BODY_LIMIT = 1 << 20;
const EXTENSION_BODY_LIMIT = 64 << 20;
const MAX_WRAP_BATCH_ITEMS = 10_000;
const CREDENTIAL = /Credential=([^/,\s]+)\//;

/** One emulator instance: the request handlers and their state, apart from the HTTP server. */
class Emulator {
  readonly store: KeyStore;
  readonly quota: QuotaCounter;
  readonly log: RequestLog;
  readonly lookupRate: LookupRateLimit;
  readonly stateFile: StateFile | undefined;
  latencyMs = 0;
  jitterMs = 0;
  faults: Record<string, FaultRule> | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(store: KeyStore, options: EmulatorOptions, stateFile: StateFile | undefined) {
    this.store = store;
    this.stateFile = stateFile;
    this.quota = new QuotaCounter(10_000);
    this.log = new RequestLog(options.requestLogLimit ?? 100_000, options.requestLogPath);
    this.lookupRate = new LookupRateLimit(options.lookupEventsRate ?? 2);
    this.configure(options);
  }

  /** Applies a patch of the runtime settings. Throws an Error that names the first invalid field. */
  configure(patch: RuntimeConfig): void {
    const { quota, latencyMs, jitterMs, faults } = patch;
    for (const [name, value] of Object.entries({ quota, latencyMs, jitterMs })) {
      if (value !== undefined && (typeof value !== 'number' || !(value >= 0))) throw new Error(`${name} must be a non-negative number.`);
    }
    if (faults !== undefined) validateFaults(faults);
    if (quota !== undefined) this.quota.quota = quota;
    if (latencyMs !== undefined) this.latencyMs = latencyMs;
    if (jitterMs !== undefined) this.jitterMs = jitterMs;
    if (faults !== undefined) this.faults = faults;
  }

  config(): RuntimeConfig {
    return { quota: this.quota.quota, latencyMs: this.latencyMs, jitterMs: this.jitterMs, faults: this.faults ?? {} };
  }

  readonly handleRequest = (request: IncomingMessage, response: ServerResponse): void => {
    const target = request.headers['x-amz-target'];
    const handled = request.url?.startsWith('/_emulator/') === true
      ? this.handleExtension(request, response)
      : typeof target === 'string' && target.startsWith(CLOUDTRAIL_TARGET_PREFIX)
        ? this.handleCloudTrail(request, response, target.slice(CLOUDTRAIL_TARGET_PREFIX.length))
        : this.handleKms(request, response);
    handled.catch((error: unknown) => {
      console.error(`KMS emulator: request ${request.method ?? ''} ${request.url ?? ''} failed: ${(error as Error).message}`);
      if (!response.headersSent) sendError(response, new KmsError('KMSInternalException', 'Internal error in the KMS emulator.', 500));
    });
  };

  cancelTimers(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private async handleKms(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const arrivalMs = Date.now();
    const requestId = randomUUID();
    const target = request.headers['x-amz-target'];
    const operationName = typeof target === 'string' && target.startsWith(TARGET_PREFIX) ? target.slice(TARGET_PREFIX.length) : undefined;
    const operation = operationName === undefined ? undefined : OPERATIONS.get(operationName);
    const eventName = operationName ?? 'Unknown';
    this.quota.countRequest(eventName);

    let error: KmsError | undefined;
    let extraDelayMs = 0;
    if (operation === undefined || operationName === undefined) {
      error = operationName !== undefined && UNIMPLEMENTED_OPERATIONS.has(operationName)
        ? new KmsError('UnsupportedOperationException', `The KMS emulator does not implement ${operationName}.`)
        : new KmsError('UnknownOperationException', `X-Amz-Target ${String(target)} does not name a KMS operation.`);
    } else if (CRYPTOGRAPHIC_OPERATIONS.has(operationName) && !this.quota.admit(arrivalMs)) {
      error = throttled();
    } else {
      const fault = drawFault(this.faults, operationName);
      if (fault !== undefined) this.quota.countFault();
      if (fault?.kind === 'reset') {
        request.socket.destroy();
        return;
      }
      if (fault?.kind === 'error') error = new KmsError(fault.name, `Injected fault: ${fault.name}.`, fault.status);
      if (fault?.kind === 'stall') extraDelayMs = fault.ms;
    }

    let input: Input | undefined;
    let result: Record<string, unknown> | undefined;
    const principal = CREDENTIAL.exec(request.headers.authorization ?? '')?.[1];
    const context: OperationContext = { store: this.store, resources: [], principal, operation: operationName };
    try {
      input = parseJsonObject(await readBody(request, KMS_BODY_LIMIT));
      if (error === undefined && operation !== undefined) {
        result = operation(input, context);
        if (this.stateFile !== undefined && !READ_ONLY_OPERATIONS.has(eventName)) await this.stateFile.flush();
      }
    } catch (caught) {
      error ??= toKmsError(caught, eventName);
    }

    this.log.append(this.buildEvent(request, eventName, arrivalMs, requestId, input, result, error, context.resources));

    const send = (): void => {
      if (error !== undefined) sendError(response, error, requestId);
      else sendJson(response, 200, result, requestId);
    };
    const delayMs = this.latencyMs + (this.jitterMs > 0 ? Math.random() * this.jitterMs : 0) + extraDelayMs;
    if (delayMs <= 0) {
      send();
      return;
    }
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      send();
    }, delayMs);
    this.timers.add(timer);
  }

  /**
   * Answers the CloudTrail API, of which the emulator implements LookupEvents
   * only. These calls bypass the KMS quota and the request log, and draw
   * faults under the operation name LookupEvents.
   */
  private async handleCloudTrail(request: IncomingMessage, response: ServerResponse, operationName: string): Promise<void> {
    const requestId = randomUUID();
    try {
      const input = parseJsonObject(await readBody(request, KMS_BODY_LIMIT));
      if (operationName !== 'LookupEvents') {
        throw new KmsError('UnknownOperationException', `The KMS emulator implements CloudTrail LookupEvents only, not ${operationName}.`);
      }
      const fault = drawFault(this.faults, operationName);
      if (fault?.kind === 'reset') {
        request.socket.destroy();
        return;
      }
      if (fault?.kind === 'error') throw new KmsError(fault.name, `Injected fault: ${fault.name}.`, fault.status);
      if (!this.lookupRate.admit(Date.now())) throw throttled();
      sendJson(response, 200, lookupEvents(this.log, input, Date.now()), requestId);
    } catch (caught) {
      sendError(response, toKmsError(caught, operationName), requestId);
    }
  }

  private buildEvent(
    request: IncomingMessage,
    eventName: string,
    arrivalMs: number,
    requestId: string,
    input: Input | undefined,
    result: Record<string, unknown> | undefined,
    error: KmsError | undefined,
    resources: string[],
  ): CloudTrailEvent {
    const accessKeyId = CREDENTIAL.exec(request.headers.authorization ?? '')?.[1] ?? 'anonymous';
    const readOnly = READ_ONLY_OPERATIONS.has(eventName);
    const accountId = this.store.accountId;
    const event: CloudTrailEvent = {
      eventVersion: '1.08',
      eventTime: new Date(arrivalMs).toISOString(),
      eventSource: 'kms.amazonaws.com',
      eventName,
      awsRegion: this.store.region,
      sourceIPAddress: request.socket.remoteAddress ?? '',
      userAgent: request.headers['user-agent'] ?? '',
      // NOTE: the access key id stands in for the IAM user name and principal id, which the emulator cannot look up.
      userIdentity: { type: 'IAMUser', accessKeyId, principalId: accessKeyId, arn: `arn:aws:iam::${accountId}:user/${accessKeyId}` },
      requestParameters: loggableFields(input),
      responseElements: readOnly || error !== undefined ? null : loggableFields(result),
      requestID: requestId,
      eventID: randomUUID(),
      readOnly,
      resources: resources.map((arn) => ({ accountId, type: 'AWS::KMS::Key', ARN: arn })),
      eventType: 'AwsApiCall',
    };
    if (error !== undefined) {
      event.errorCode = error.name;
      event.errorMessage = error.message;
    }
    return event;
  }

  private async handleExtension(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = request.url?.split('?')[0];
    const route = `${request.method ?? ''} ${path ?? ''}`;
    try {
      const body = await readBody(request, EXTENSION_BODY_LIMIT);
      switch (route) {
        case 'GET /_emulator/stats':
          sendJson(response, 200, this.quota.stats(Date.now()));
          return;
        case 'POST /_emulator/stats/reset':
          this.quota.resetStats();
          sendJson(response, 200, {});
          return;
        case 'PUT /_emulator/config':
          this.configureFromJson(parseJsonObject(body));
          sendJson(response, 200, this.config());
          return;
        case 'GET /_emulator/request-log':
          sendJson(response, 200, this.log.events());
          return;
        case 'PUT /_emulator/key-access':
          sendJson(response, 200, this.setKeyAccess(parseJsonObject(body)));
          return;
        case 'POST /_emulator/wrap-batch':
          sendJson(response, 200, this.wrapBatch(parseJsonObject(body)));
          return;
        default:
          sendError(response, new KmsError('NotFoundException', `No emulator endpoint ${route}.`, 404));
      }
    } catch (caught) {
      sendError(response, toKmsError(caught, route));
    }
  }

  /** Applies a config patch sent as JSON, where null stands for Infinity (quota) or no faults. */
  private configureFromJson(patch: Input): void {
    const config: RuntimeConfig = {};
    if ('quota' in patch) config.quota = patch.quota === null ? Infinity : (patch.quota as number);
    if ('latencyMs' in patch) config.latencyMs = patch.latencyMs as number;
    if ('jitterMs' in patch) config.jitterMs = patch.jitterMs as number;
    if ('faults' in patch) config.faults = patch.faults === null ? {} : (patch.faults as Record<string, FaultRule>);
    try {
      this.configure(config);
    } catch (caught) {
      throw validationError((caught as Error).message);
    }
  }

  /**
   * Sets a key's access list from `{KeyId, Principals}`, where Principals is a
   * list of access key ids, or null to allow every caller again.
   */
  private setKeyAccess(input: Input): { KeyId: string; Principals: string[] | null } {
    const keyId = input.KeyId;
    const principals = input.Principals;
    if (typeof keyId !== 'string') throw validationError('KeyId must be a key id, key ARN, alias name or alias ARN.');
    if (principals !== null && (!Array.isArray(principals) || !principals.every((value) => typeof value === 'string' && value.length > 0))) {
      throw validationError('Principals must be a list of access key ids, or null to allow every caller.');
    }
    const record = this.store.setAllowedPrincipals(keyId, principals === null ? undefined : (principals as string[]));
    return { KeyId: record.arn, Principals: record.allowedPrincipals ?? null };
  }

  /** Encrypts many plaintexts under one key, outside the quota and the request log, for seeding test data. */
  private wrapBatch(input: Input): { KeyId: string; CiphertextBlobs: string[] } {
    const keyId = input.KeyId;
    const items = input.Items;
    if (typeof keyId !== 'string') throw validationError('KeyId must be a key id, key ARN, alias name or alias ARN.');
    if (!Array.isArray(items) || items.length > MAX_WRAP_BATCH_ITEMS) {
      throw validationError(`Items must be a list of at most ${MAX_WRAP_BATCH_ITEMS} {Plaintext, EncryptionContext} objects.`);
    }
    const key = this.store.resolveKey(keyId);
    const blobs = items.map((item: unknown, index) => {
      const entry = item as { Plaintext?: unknown; EncryptionContext?: unknown } | null;
      if (typeof entry?.Plaintext !== 'string') throw validationError(`Items[${index}].Plaintext must be a base64 string.`);
      const plaintext = Buffer.from(entry.Plaintext, 'base64');
      if (plaintext.length < 1 || plaintext.length > 4096) throw validationError(`Items[${index}].Plaintext must decode to 1 to 4096 bytes.`);
      const context = entry.EncryptionContext;
      if (context !== undefined && (typeof context !== 'object' || context === null || Object.values(context).some((value) => typeof value !== 'string'))) {
        throw validationError(`Items[${index}].EncryptionContext must be a map of strings to strings.`);
      }
      return this.store.encrypt(key, plaintext, context as Record<string, string> | undefined).toString('base64');
    });
    return { KeyId: key.arn, CiphertextBlobs: blobs };
  }
}

function toKmsError(error: unknown, operation: string): KmsError {
  if (error instanceof KmsError) return error;
  console.error(`KMS emulator: ${operation} failed: ${(error as Error).message}`);
  return new KmsError('KMSInternalException', 'Internal error in the KMS emulator.', 500);
}

function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

/** Starts an AWS KMS emulator that speaks the JSON 1.1 protocol of `@aws-sdk/client-kms`. */
export async function startEmulator(options: EmulatorOptions = {}): Promise<RunningEmulator> {
  const store = new KeyStore({ region: options.region, accountId: options.accountId });
  let stateFile: StateFile | undefined;
  if (options.statePath !== undefined) {
    stateFile = new StateFile(options.statePath);
    const state = await stateFile.load();
    if (state !== undefined) store.restore(state);
    const file = stateFile;
    store.onChange = () => file.schedule(() => store.snapshot());
  }
  const emulator = new Emulator(store, options, stateFile);

  const server = createServer(emulator.handleRequest);
  // Clients keep connections open for many requests, as the AWS SDK does against AWS KMS.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.maxRequestsPerSocket = 0;
  const host = options.host ?? '127.0.0.1';
  const address = await listen(server, options.port ?? 0, host);
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  return {
    url: `http://${urlHost}:${address.port}`,
    port: address.port,
    store,
    stats: () => emulator.quota.stats(Date.now()),
    resetStats: () => emulator.quota.resetStats(),
    configure: (patch) => emulator.configure(patch),
    requestLog: () => emulator.log.events(),
    close: async () => {
      emulator.cancelTimers();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await emulator.log.close();
      await stateFile?.flush();
    },
  };
}
