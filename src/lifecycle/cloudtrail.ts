import { CloudTrailClient, LookupEventsCommand, type CloudTrailClientConfig, type Event } from '@aws-sdk/client-cloudtrail';
import { emulatorCredentials, isLoopbackEndpoint, kmsRegion } from '../kms/client.js';
import type { Logger } from '../log.js';
import type { KmsEventSource, KmsTrailEvent } from './exposure.js';

export interface CloudTrailClientOptions {
  /** CloudTrail endpoint URL; unset means the SDK's regional AWS endpoint. */
  endpoint?: string | undefined;
  /** AWS region; falls back to `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`. */
  region?: string | undefined;
}

/**
 * Creates a CloudTrail client. The SDK retries nothing (`maxAttempts: 1`)
 * because `CloudTrailEventSource` paces and retries LookupEvents itself.
 * Against an emulator on loopback with no `AWS_ACCESS_KEY_ID` set, fixed
 * dummy credentials are used, as for the KMS client.
 */
export function createCloudTrailClient(options: CloudTrailClientOptions = {}): CloudTrailClient {
  const config: CloudTrailClientConfig = { region: kmsRegion(options.region), maxAttempts: 1 };
  if (options.endpoint !== undefined) {
    config.endpoint = options.endpoint;
    if (isLoopbackEndpoint(options.endpoint) && process.env.AWS_ACCESS_KEY_ID === undefined) {
      config.credentials = emulatorCredentials;
    }
  }
  return new CloudTrailClient(config);
}

export interface CloudTrailEventSourceOptions {
  client: CloudTrailClient;
  logger: Logger;
  /**
   * LookupEvents requests per second that this source sends, 2 by default.
   * CloudTrail allows two per second per account and Region, shared with
   * every other caller, so throttling can still happen and is retried.
   */
  requestsPerSecond?: number | undefined;
  /** Tries per page before a ThrottlingException is raised, 8 by default. */
  maxAttempts?: number | undefined;
  /** First retry delay in milliseconds, doubled on each retry, 500 by default. */
  retryBaseMs?: number | undefined;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Reads KMS events from CloudTrail's event history through LookupEvents,
 * filtered by `ResourceName = key ARN`, one page of up to 50 events per request.
 *
 * NOTE: every call under the key counts against that page budget, including
 * the ReEncrypt calls of a rotation. At CloudTrail's two requests per second
 * a window with a million such calls takes about three hours to read.
 */
export class CloudTrailEventSource implements KmsEventSource {
  private readonly client: CloudTrailClient;
  private readonly logger: Logger;
  private readonly intervalMs: number;
  private readonly maxAttempts: number;
  private readonly retryBaseMs: number;
  private nextRequestAt = 0;

  constructor(options: CloudTrailEventSourceOptions) {
    this.client = options.client;
    this.logger = options.logger;
    this.intervalMs = 1000 / (options.requestsPerSecond ?? 2);
    this.maxAttempts = options.maxAttempts ?? 8;
    this.retryBaseMs = options.retryBaseMs ?? 500;
  }

  async events(kekArn: string, since: Date, until: Date): Promise<KmsTrailEvent[]> {
    const events: KmsTrailEvent[] = [];
    let nextToken: string | undefined;
    let pages = 0;
    this.logger.info({ event: 'cloudtrail.lookup.start', kekArn, since: since.toISOString(), until: until.toISOString() }, 'reading CloudTrail events');
    do {
      const command = new LookupEventsCommand({
        LookupAttributes: [{ AttributeKey: 'ResourceName', AttributeValue: kekArn }],
        StartTime: since,
        EndTime: until,
        MaxResults: 50,
        NextToken: nextToken,
      });
      const page = await this.send(command, kekArn, pages);
      pages += 1;
      for (const event of page.Events ?? []) {
        const parsed = this.parse(event, kekArn);
        // CloudTrail's EndTime is inclusive, but the report window is [since, until).
        if (Date.parse(parsed.eventTime) < until.getTime()) events.push(parsed);
      }
      nextToken = page.NextToken;
    } while (nextToken !== undefined);
    this.logger.info({ event: 'cloudtrail.lookup.done', kekArn, pages, events: events.length }, 'read CloudTrail events');
    return events;
  }

  /** Sends one LookupEvents request at the configured pace, retrying ThrottlingException with exponential backoff and jitter. */
  private async send(command: LookupEventsCommand, kekArn: string, page: number) {
    for (let attempt = 1; ; attempt += 1) {
      const now = Date.now();
      const startAt = Math.max(now, this.nextRequestAt);
      this.nextRequestAt = startAt + this.intervalMs;
      if (startAt > now) await sleep(startAt - now);
      try {
        return await this.client.send(command);
      } catch (error) {
        if ((error as Error).name !== 'ThrottlingException') throw error;
        if (attempt >= this.maxAttempts) {
          throw new Error(
            `CloudTrail LookupEvents for ${kekArn} failed: throttled ${attempt} times in a row. ` +
              'Other callers in the account and Region use the same LookupEvents rate, so rerun the command later',
            { cause: error },
          );
        }
        const delayMs = Math.round(this.retryBaseMs * 2 ** (attempt - 1) * (0.5 + Math.random() / 2));
        this.logger.warn({ event: 'cloudtrail.lookup.retry', kekArn, page, attempt, delayMs, err: error }, 'CloudTrail throttled LookupEvents, retrying');
        this.nextRequestAt = Math.max(this.nextRequestAt, Date.now() + delayMs);
      }
    }
  }

  /**
   * Reads the fields the report needs from the event's CloudTrailEvent JSON.
   * When that JSON is missing or invalid, the event still counts, with the
   * summary fields of the LookupEvents result and no encryption context.
   * NOTE: those fields carry no error code, so such a call is reported as an
   * exposure even when the KMS rejected it.
   */
  private parse(event: Event, kekArn: string): KmsTrailEvent {
    if (event.CloudTrailEvent !== undefined) {
      try {
        const record = JSON.parse(event.CloudTrailEvent) as Partial<KmsTrailEvent>;
        if (typeof record.eventTime === 'string' && typeof record.eventName === 'string') {
          return {
            eventTime: record.eventTime,
            eventName: record.eventName,
            userIdentity: record.userIdentity ?? {},
            requestParameters: record.requestParameters ?? null,
            resources: record.resources,
            errorCode: record.errorCode,
          };
        }
      } catch (error) {
        this.logger.warn({ event: 'cloudtrail.event.invalid', kekArn, eventId: event.EventId, err: error }, 'invalid CloudTrailEvent JSON, counting the event without its encryption context');
      }
    }
    return {
      eventTime: (event.EventTime ?? new Date(0)).toISOString(),
      eventName: event.EventName ?? 'Unknown',
      userIdentity: { accessKeyId: event.AccessKeyId },
      requestParameters: null,
      resources: (event.Resources ?? []).flatMap((resource) => (resource.ResourceName === undefined ? [] : [{ ARN: resource.ResourceName }])),
      errorCode: undefined,
    };
  }
}
