import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';

/** One API call in the shape of an AWS CloudTrail record for kms.amazonaws.com. */
export interface CloudTrailEvent {
  eventVersion: '1.08';
  eventTime: string;
  eventSource: 'kms.amazonaws.com';
  eventName: string;
  awsRegion: string;
  sourceIPAddress: string;
  userAgent: string;
  userIdentity: { type: 'IAMUser'; accessKeyId: string; principalId: string; arn: string };
  requestParameters: Record<string, unknown> | null;
  responseElements: Record<string, unknown> | null;
  requestID: string;
  eventID: string;
  readOnly: boolean;
  resources: Array<{ accountId: string; type: 'AWS::KMS::Key'; ARN: string }>;
  eventType: 'AwsApiCall';
  errorCode?: string;
  errorMessage?: string;
}

/** Request and response fields that carry plaintext, ciphertext or MAC input and never enter the log. */
const SECRET_FIELDS = new Set(['Plaintext', 'CiphertextBlob', 'Message', 'Mac']);

/** Copies top-level fields under CloudTrail's lower camel case names, leaving out secret fields. Returns null when none remain. */
export function loggableFields(fields: Record<string, unknown> | undefined): Record<string, unknown> | null {
  if (fields === undefined) return null;
  let result: Record<string, unknown> | null = null;
  for (const name of Object.keys(fields)) {
    if (SECRET_FIELDS.has(name)) continue;
    result ??= {};
    result[name.charAt(0).toLowerCase() + name.slice(1)] = fields[name];
  }
  return result;
}

/**
 * Keeps the most recent events in a ring and, when given a path, appends
 * every event to that file as one JSON line. Lines written in the same event
 * loop turn go out in one write.
 */
export class RequestLog {
  private readonly limit: number;
  private readonly ring: CloudTrailEvent[] = [];
  private next = 0;
  /** Events appended since the start, including those the ring has dropped. */
  private appended = 0;
  private readonly stream: WriteStream | undefined;
  private pending: string[] = [];
  private flushScheduled = false;

  constructor(limit: number, path?: string) {
    this.limit = limit;
    if (path !== undefined) {
      this.stream = createWriteStream(path, { flags: 'a', highWaterMark: 1 << 20 });
      this.stream.on('error', (error) => {
        console.error(`KMS emulator: writing request log ${path} failed: ${error.message}`);
      });
    }
  }

  append(event: CloudTrailEvent): void {
    this.appended += 1;
    if (this.limit > 0) {
      if (this.ring.length < this.limit) this.ring.push(event);
      else this.ring[this.next] = event;
      this.next = (this.next + 1) % this.limit;
    }
    if (this.stream !== undefined) {
      this.pending.push(JSON.stringify(event));
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    }
  }

  /** Returns the kept events, oldest first. */
  events(): CloudTrailEvent[] {
    if (this.ring.length < this.limit) return this.ring.slice();
    return [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }

  /**
   * Returns the kept events, oldest first, and the sequence number of the
   * first one. Sequence numbers count every appended event from 0, so they
   * stay valid while the ring drops old events.
   */
  snapshot(): { events: CloudTrailEvent[]; firstSequence: number } {
    const events = this.events();
    return { events, firstSequence: this.appended - events.length };
  }

  async close(): Promise<void> {
    this.flush();
    if (this.stream === undefined || this.stream.destroyed) return;
    this.stream.end();
    await once(this.stream, 'finish');
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.pending.length === 0 || this.stream === undefined || this.stream.destroyed) return;
    this.stream.write(this.pending.join('\n') + '\n');
    this.pending = [];
  }
}
