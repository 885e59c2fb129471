import Bottleneck from 'bottleneck';
import type { Logger } from '../log.js';

export interface QuotaLimiterOptions {
  /** KMS requests per second that the job may send, over all its threads (and hosts, with a shared datastore). */
  quota: number;
  /** Largest number of requests one batch may carry. */
  maxBatch: number;
  logger?: Logger | undefined;
  /** Extra Bottleneck options, for instance a Redis datastore shared by a fleet. */
  bottleneck?: Bottleneck.ConstructorOptions | undefined;
}

/**
 * What the rotation engine needs from a limiter. `QuotaLimiter` is the
 * process-local one; a fleet passes its own, shared by several hosts.
 */
export interface RequestLimiter {
  /** Current multiplier of the rate, from 0.05 to 1. */
  readonly rateFactor: number;
  /** Rows to put in the next batch. */
  batchSize(): number;
  /** Waits until `requests` KMS requests may be sent. */
  acquire(requests: number): Promise<void>;
  /** Records throttled responses, so that the rate drops. */
  recordThrottled(count: number): void;
  stop(): Promise<void>;
}

/** Refill step of the token bucket. */
const refillIntervalMs = 100;
/**
 * Bottleneck checks for a due refill on each heartbeat, so a refill lands up
 * to one heartbeat late. A short heartbeat keeps that loss near 2 percent.
 */
const heartbeatMs = 4;
/** Share of the quota kept unused, for requests that arrive late at the KMS and land in the next second. */
const safetyMargin = 0.005;
const minRateFactor = 0.05;
const decreaseFactor = 0.7;
const increaseStep = 0.05;

/**
 * One token bucket for the whole job, in the main thread. A batch of n KMS
 * requests takes n tokens before it is sent, so workers need no limiter of
 * their own.
 *
 * The bucket holds at most `burst` tokens and refills `rate` tokens per
 * second, so any one-second window grants at most `burst + rate`, which is
 * kept under the quota.
 *
 * Throttling lowers the sending rate multiplicatively and each throttle-free
 * second raises it additively (AIMD). The rate is lowered by charging more
 * tokens per request (n / factor) instead of changing the bucket's settings,
 * because Bottleneck's `updateSettings` has been reported to stop
 * reservoir refills, and because a per-host factor also works unchanged
 * when the bucket lives in Redis for a fleet.
 */
export class QuotaLimiter implements RequestLimiter {
  readonly quota: number;
  readonly burst: number;
  readonly rate: number;
  #bottleneck: Bottleneck | null;
  #factor = 1;
  #throttledThisSecond = 0;
  #timer: NodeJS.Timeout | null = null;
  #logger: Logger | undefined;
  #maxBatch: number;

  constructor(options: QuotaLimiterOptions) {
    this.#logger = options.logger;
    this.quota = options.quota;
    if (!Number.isFinite(options.quota) || options.quota <= 0) {
      this.#bottleneck = null;
      this.burst = options.maxBatch;
      this.rate = Infinity;
      this.#maxBatch = options.maxBatch;
      return;
    }
    // A batch must fit in the bucket, and the bucket should stay small next to
    // the quota so that `burst + rate` leaves most of the quota to `rate`.
    this.#maxBatch = Math.max(1, Math.min(options.maxBatch, Math.floor(options.quota * 0.02)));
    this.burst = Math.max(this.#maxBatch, Math.ceil(options.quota * 0.01));
    this.rate = Math.max(1, (options.quota - this.burst) * (1 - safetyMargin));
    this.#bottleneck = new Bottleneck({
      reservoir: this.burst,
      reservoirIncreaseInterval: refillIntervalMs,
      reservoirIncreaseAmount: (this.rate * refillIntervalMs) / 1000,
      reservoirIncreaseMaximum: this.burst,
      heartbeatInterval: heartbeatMs,
      maxConcurrent: null,
      ...options.bottleneck,
    });
    this.#timer = setInterval(() => this.#adjust(), 1000);
    this.#timer.unref();
  }

  /** Current multiplier of the rate, from 0.05 to 1. */
  get rateFactor(): number {
    return this.#factor;
  }

  /** Rows to put in the next batch, smaller while the rate is lowered so that its cost still fits the bucket. */
  batchSize(): number {
    if (this.#bottleneck === null) return this.#maxBatch;
    return Math.max(1, Math.floor(this.#maxBatch * this.#factor));
  }

  /** Waits until `requests` KMS requests may be sent. */
  async acquire(requests: number): Promise<void> {
    if (this.#bottleneck === null || requests <= 0) return;
    const weight = Math.min(this.burst, Math.ceil(requests / this.#factor));
    await this.#bottleneck.schedule({ weight }, async () => undefined);
  }

  /** Records throttled responses; the rate drops at the next adjustment. */
  recordThrottled(count: number): void {
    this.#throttledThisSecond += count;
  }

  #adjust(): void {
    const previous = this.#factor;
    if (this.#throttledThisSecond > 0) {
      this.#factor = Math.max(minRateFactor, this.#factor * decreaseFactor);
    } else {
      this.#factor = Math.min(1, this.#factor + increaseStep);
    }
    if (this.#factor !== previous && this.#throttledThisSecond > 0) {
      this.#logger?.warn(
        { event: 'limiter.decrease', throttled: this.#throttledThisSecond, rateFactor: this.#factor },
        'KMS throttled requests; lowering the request rate',
      );
    }
    this.#throttledThisSecond = 0;
  }

  async stop(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#bottleneck !== null) await this.#bottleneck.stop({ dropWaitingJobs: true });
  }
}
