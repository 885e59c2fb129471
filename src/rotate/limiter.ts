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
 * Limiter interface of the rotation engine. `QuotaLimiter` is the
 * process-local one, and a fleet passes its own, shared by several hosts.
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

/** Period of the refill timer of a local bucket. */
const refillTickMs = 5;
/** Refill step of a bucket kept in a shared datastore. */
const sharedRefillIntervalMs = 25;
/** Share of the quota kept unused, for requests that arrive late at the KMS and land in the next second. */
const safetyMargin = 0.01;
/**
 * The same for a bucket shared by several processes. Each process adds its
 * own event-loop delay between grant and send, so grants near the end of a
 * second reach the KMS in the next one more often: 3 percent covered three
 * processes on two loaded cores in the fleet tests.
 */
const sharedSafetyMargin = 0.03;
const minRateFactor = 0.05;
/** Period of the AIMD adjustment: short, so that the rate drops within a quarter second of a throttled burst. */
const adjustIntervalMs = 250;
/**
 * Cut per adjustment period with throttling. Moderate, because one burst
 * that reached the KMS late (a stalled process, a loaded host) throttles
 * a few requests without the quota being lower than stated.
 */
const decreaseFactor = 0.85;
/** Rise per throttle-free adjustment period: 6 percent of the rate per second. */
const increaseStep = 0.015;

/**
 * One token bucket for the whole job, in the main thread. A batch of n KMS
 * requests takes n tokens before it is sent, so workers need no limiter of
 * their own.
 *
 * The bucket holds at most `burst` tokens and refills `rate` tokens per
 * second, so any one-second window grants at most `burst + rate` (plus one
 * refill tick), which is kept under the quota. A local bucket is refilled by
 * a timer of our own from the measured elapsed time: Bottleneck's built-in
 * increase fires on its heartbeat, up to one heartbeat late each time, and
 * would lose several percent of the quota. A bucket in a shared datastore
 * uses Bottleneck's built-in increase, which the datastore computes.
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
  #lastDecrease = -Infinity;
  #timer: NodeJS.Timeout | null = null;
  #refillTimer: NodeJS.Timeout | null = null;
  #logger: Logger | undefined;
  #maxBatch: number;
  /** True when the bucket lives in a datastore shared with other processes, such as Redis. */
  #shared: boolean;
  #datastoreErrors = 0;

  constructor(options: QuotaLimiterOptions) {
    this.#logger = options.logger;
    this.quota = options.quota;
    this.#shared = (options.bottleneck?.datastore ?? 'local') !== 'local';
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
    const shared = options.bottleneck?.datastore !== undefined && options.bottleneck.datastore !== 'local';
    if (shared) {
      // The datastore adds `rate / 40` every 25 ms, counting whole elapsed
      // steps, and caps the bucket. The cap must hold one step plus a batch
      // left over from the step before, or refills are lost to it. A second
      // then grants at most cap + rate = 1.025 × rate + one batch.
      const step = sharedRefillIntervalMs / 1000;
      this.rate = Math.max(1, ((options.quota - this.#maxBatch) / (1 + step)) * (1 - sharedSafetyMargin));
      this.burst = this.rate * step + this.#maxBatch;
      this.#bottleneck = new Bottleneck({
        reservoir: this.burst,
        reservoirIncreaseInterval: sharedRefillIntervalMs,
        reservoirIncreaseAmount: this.rate * step,
        reservoirIncreaseMaximum: this.burst,
        maxConcurrent: null,
        ...options.bottleneck,
      });
    } else {
      // The bucket holds a whole batch plus two refill ticks. With room for
      // only one batch, the refill that arrives while the bucket is nearly
      // full would overflow and be lost before every grant.
      this.burst = this.#maxBatch + Math.ceil((options.quota * 2 * refillTickMs) / 1000);
      // A refill tick that straddles a second boundary adds up to one tick of
      // tokens to that second, hence the division.
      this.rate = Math.max(1, ((options.quota - this.burst) / (1 + refillTickMs / 1000)) * (1 - safetyMargin));
      this.#bottleneck = new Bottleneck({ reservoir: this.burst, maxConcurrent: null, ...options.bottleneck });
      this.#startRefill();
    }
    if (this.#shared) {
      // Bottleneck reports datastore failures as events; without a listener they would pass unseen.
      this.#bottleneck.on('error', (error: unknown) => {
        this.#datastoreErrors += 1;
        if (this.#datastoreErrors === 1) this.#logger?.warn({ event: 'limiter.datastore.error', err: error }, 'limiter datastore failed');
      });
    }
    this.#timer = setInterval(() => this.#adjust(), adjustIntervalMs);
    this.#timer.unref();
  }

  #startRefill(): void {
    const bottleneck = this.#bottleneck!;
    let last = performance.now();
    let running = false;
    this.#refillTimer = setInterval(() => {
      if (running) return;
      running = true;
      const now = performance.now();
      const tokens = (this.rate * (now - last)) / 1000;
      last = now;
      bottleneck
        .currentReservoir()
        .then((level) => {
          const room = this.burst - (level ?? 0);
          if (room > 0) return bottleneck.incrementReservoir(Math.min(tokens, room));
          return undefined;
        })
        .catch((error: unknown) => this.#logger?.error({ event: 'limiter.refill.error', err: error }, 'token bucket refill failed'))
        .finally(() => {
          running = false;
        });
    }, refillTickMs);
    this.#refillTimer.unref();
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
    // Cut at once on the first throttle after a quiet period, rather than at
    // the next adjustment, so fewer requests go out at the old rate.
    if (performance.now() - this.#lastDecrease >= adjustIntervalMs) this.#adjust();
  }

  #adjust(): void {
    const previous = this.#factor;
    if (this.#throttledThisSecond > 0) {
      this.#factor = Math.max(minRateFactor, this.#factor * decreaseFactor);
      this.#lastDecrease = performance.now();
    } else if (performance.now() - this.#lastDecrease >= adjustIntervalMs) {
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
    if (this.#refillTimer !== null) clearInterval(this.#refillTimer);
    this.#timer = null;
    this.#refillTimer = null;
    if (this.#bottleneck === null) return;
    const stopped = this.#bottleneck.stop({ dropWaitingJobs: true });
    if (!this.#shared) {
      await stopped;
      return;
    }
    // A shared datastore may be unreachable, so neither step waits for it for long.
    await Promise.race([stopped.catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
    await this.#bottleneck.disconnect(false).catch(() => undefined);
    if (this.#datastoreErrors > 1) {
      this.#logger?.warn({ event: 'limiter.datastore.errors', errors: this.#datastoreErrors }, 'limiter datastore failed repeatedly');
    }
  }
}
