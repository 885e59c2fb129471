import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../log.js';
import { QuotaLimiter, type RequestLimiter } from '../rotate/limiter.js';

export type LimiterMode = 'redis' | 'local';

export interface FleetLimiterOptions {
  /** KMS requests per second for the whole fleet. */
  quota: number;
  maxBatch: number;
  /** Redis URL of the shared bucket; null keeps every host on its local share. */
  redisUrl: string | null;
  /** Bottleneck id shared by every process of the job, and the prefix of its Redis keys. */
  limiterId: string;
  jobId: string;
  logger: Logger;
  /** How often the caller calls `sync`, in milliseconds. */
  syncIntervalMs: number;
  /** A `schedule` on the shared bucket that takes longer than this counts as a Redis failure. */
  acquireTimeoutMs?: number | undefined;
  /** How often a host on its local share checks whether Redis answers again. */
  probeIntervalMs?: number | undefined;
  /** Records that this host left the shared bucket, so that the other hosts leave it too. */
  onFallback: (reason: string) => Promise<void>;
  /** Records that Redis answers again, so that every host returns to the shared bucket together. */
  onRedisRestored: () => Promise<void>;
}

/** The job's limiter state as stored in PostgreSQL, read by the caller on each sync. */
export interface FleetLimiterState {
  mode: LimiterMode;
  /** Milliseconds from now until the mode takes effect, negative when it already has. */
  modeInMs: number;
  /** Hosts whose heartbeat is fresh, this one included. */
  liveHosts: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref());

class TimeoutError extends Error {
  override name = 'TimeoutError';
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Turns a redis:// or rediss:// URL into ioredis options. */
export function redisOptionsFromUrl(url: string): RedisOptions {
  const parsed = new URL(url);
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new Error(`invalid Redis URL "${parsed.protocol}//${parsed.host}": expected redis://host:port or rediss://host:port`);
  }
  const db = parsed.pathname.length > 1 ? Number(parsed.pathname.slice(1)) : 0;
  return {
    host: parsed.hostname,
    port: parsed.port === '' ? 6379 : Number(parsed.port),
    ...(parsed.username === '' ? {} : { username: decodeURIComponent(parsed.username) }),
    ...(parsed.password === '' ? {} : { password: decodeURIComponent(parsed.password) }),
    db: Number.isInteger(db) ? db : 0,
    ...(parsed.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/**
 * The KMS request limiter of one host of a fleet.
 *
 * Normally every host takes tokens from one bucket in Redis (Bottleneck's
 * ioredis datastore), so the fleet as a whole stays under the quota. When
 * Redis fails or a `schedule` on it times out, the host drops that bucket and
 * falls back to a local one at quota / live hosts, and records the switch in
 * PostgreSQL so that the other hosts follow at their next sync. When Redis
 * answers again, one host records a switch time and every host returns to a
 * fresh Redis bucket at that time.
 *
 * Each switch leaves a pause of at least one second with no grants at all,
 * so that tokens granted under the old mode and the new one never fall into
 * the same second. A fresh Bottleneck instance is built on every return to
 * Redis, because a Redis restart loses the bucket's keys and Lua scripts and
 * Bottleneck's own recovery from that has been reported to stall.
 */
export class FleetLimiter implements RequestLimiter {
  readonly quota: number;
  #options: FleetLimiterOptions;
  #mode: LimiterMode;
  #redis: QuotaLimiter | null = null;
  #local: QuotaLimiter | null = null;
  #liveHosts = 1;
  /** Local time before which no token is granted. */
  #pausedUntil = 0;
  #fellBackAt = 0;
  #switchToRedisAt: number | null = null;
  #probeTimer: NodeJS.Timeout | null = null;
  #probing = false;
  #stopped = false;

  constructor(options: FleetLimiterOptions) {
    this.quota = options.quota;
    this.#options = options;
    if (options.redisUrl === null) {
      this.#mode = 'local';
      this.#local = this.#createLocal();
    } else {
      this.#mode = 'redis';
      this.#redis = this.#createRedis(options.redisUrl);
    }
  }

  get mode(): LimiterMode {
    return this.#mode;
  }

  get rateFactor(): number {
    return this.#active().rateFactor;
  }

  batchSize(): number {
    return this.#active().batchSize();
  }

  recordThrottled(count: number): void {
    this.#active().recordThrottled(count);
  }

  async acquire(requests: number): Promise<void> {
    for (;;) {
      if (this.#stopped) throw new Error(`limiter of job ${this.#options.jobId} is stopped`);
      const wait = this.#pausedUntil - Date.now();
      if (wait > 0) await sleep(wait);
      if (this.#switchToRedisAt !== null && Date.now() >= this.#switchToRedisAt) this.#returnToRedis();

      const redis = this.#redis;
      if (this.#mode === 'redis' && redis !== null) {
        try {
          await withTimeout(redis.acquire(requests), this.#options.acquireTimeoutMs ?? 5_000, 'acquiring tokens from the Redis bucket');
          if (this.#redis === redis) return;
        } catch (error) {
          if (this.#redis === redis) this.#fallBack('Redis failed', error);
        }
        continue;
      }

      const local = this.#local ?? (this.#local = this.#createLocal());
      try {
        await local.acquire(requests);
      } catch (error) {
        // A bucket replaced by `sync` or a mode switch drops its waiters; they try again.
        if (this.#local === local && this.#mode === 'local' && !this.#stopped) throw error;
        continue;
      }
      if (this.#local !== local) continue;
      // Tokens granted after the switch time belong to the Redis bucket's turn, so they are dropped.
      if (this.#switchToRedisAt !== null && Date.now() >= this.#switchToRedisAt) continue;
      if (this.#pausedUntil > Date.now()) continue;
      return;
    }
  }

  /** Applies the job's limiter state read from PostgreSQL. */
  sync(state: FleetLimiterState): void {
    if (this.#stopped) return;
    const live = Math.max(1, state.liveHosts);
    if (live !== this.#liveHosts) {
      this.#liveHosts = live;
      if (this.#local !== null) {
        // A new bucket for the new share; the old one is stopped once its waiters are dropped.
        const old = this.#local;
        this.#local = this.#createLocal();
        void old.stop();
      }
    }
    if (this.#options.redisUrl === null) return;
    if (state.mode === 'local' && this.#mode === 'redis') {
      this.#fallBack('another host lost Redis', null);
    } else if (state.mode === 'redis' && this.#mode === 'local' && this.#switchToRedisAt === null) {
      const switchAt = Date.now() + Math.max(0, state.modeInMs);
      // A restore recorded before this host fell back is stale.
      if (switchAt > this.#fellBackAt) this.#switchToRedisAt = switchAt;
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#probeTimer !== null) clearInterval(this.#probeTimer);
    await Promise.all([this.#redis?.stop(), this.#local?.stop()]);
    this.#redis = null;
    this.#local = null;
  }

  #active(): QuotaLimiter {
    if (this.#mode === 'redis' && this.#redis !== null) return this.#redis;
    return this.#local ?? (this.#local = this.#createLocal());
  }

  #createLocal(): QuotaLimiter {
    return new QuotaLimiter({ quota: this.quota / this.#liveHosts, maxBatch: this.#options.maxBatch, logger: this.#options.logger });
  }

  #createRedis(url: string): QuotaLimiter {
    return new QuotaLimiter({
      quota: this.quota,
      maxBatch: this.#options.maxBatch,
      logger: this.#options.logger,
      bottleneck: {
        id: this.#options.limiterId,
        datastore: 'ioredis',
        Redis,
        clientOptions: {
          ...redisOptionsFromUrl(url),
          // Fail commands at once while disconnected instead of queueing them without a bound.
          enableOfflineQueue: false,
          maxRetriesPerRequest: 1,
          connectTimeout: 2_000,
        },
        clearDatastore: false,
        // The bucket refills only when some host runs a Bottleneck script, so every host ticks often.
        heartbeatInterval: 10,
        // Redis drops the bucket's keys after ten idle minutes.
        timeout: 600_000,
      },
    });
  }

  #fallBack(reason: string, error: unknown): void {
    if (this.#mode === 'local' || this.#stopped) return;
    this.#mode = 'local';
    this.#fellBackAt = Date.now();
    this.#switchToRedisAt = null;
    // Other hosts may keep using the Redis bucket until their next sync, and grants of the
    // last second still reach the KMS, so this host waits for both before granting locally.
    this.#pausedUntil = Math.max(this.#pausedUntil, Date.now() + this.#options.syncIntervalMs + 1_000);
    const old = this.#redis;
    this.#redis = null;
    this.#local = this.#createLocal();
    this.#options.logger.warn(
      {
        event: 'limiter.fallback',
        jobId: this.#options.jobId,
        limiterId: this.#options.limiterId,
        reason,
        err: error ?? undefined,
        liveHosts: this.#liveHosts,
        localQuota: this.quota / this.#liveHosts,
      },
      'left the shared Redis bucket; using a local share of the quota',
    );
    void old?.stop();
    this.#options.onFallback(reason).catch((failure: unknown) => {
      this.#options.logger.error({ event: 'limiter.fallback.record-failed', jobId: this.#options.jobId, err: failure }, 'recording the limiter fallback failed');
    });
    this.#startProbe();
  }

  #returnToRedis(): void {
    const url = this.#options.redisUrl;
    if (url === null || this.#switchToRedisAt === null) return;
    this.#pausedUntil = Math.max(this.#pausedUntil, this.#switchToRedisAt + 1_000);
    this.#switchToRedisAt = null;
    this.#mode = 'redis';
    this.#redis = this.#createRedis(url);
    const old = this.#local;
    this.#local = null;
    void old?.stop();
    if (this.#probeTimer !== null) clearInterval(this.#probeTimer);
    this.#probeTimer = null;
    this.#options.logger.info(
      { event: 'limiter.redis-resumed', jobId: this.#options.jobId, limiterId: this.#options.limiterId },
      'returned to the shared Redis bucket',
    );
  }

  #startProbe(): void {
    if (this.#probeTimer !== null || this.#options.redisUrl === null) return;
    this.#probeTimer = setInterval(() => void this.#probe(), this.#options.probeIntervalMs ?? 2_000);
    this.#probeTimer.unref();
  }

  async #probe(): Promise<void> {
    const url = this.#options.redisUrl;
    if (this.#probing || url === null || this.#mode === 'redis' || this.#switchToRedisAt !== null) return;
    this.#probing = true;
    const client = new Redis({ ...redisOptionsFromUrl(url), lazyConnect: true, connectTimeout: 1_000, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => undefined);
    try {
      await withTimeout(client.connect().then(() => client.ping()), 2_000, 'Redis probe');
      this.#options.logger.info({ event: 'limiter.redis-restored', jobId: this.#options.jobId, limiterId: this.#options.limiterId }, 'Redis answers again');
      await this.#options.onRedisRestored();
    } catch (error) {
      this.#options.logger.debug({ event: 'limiter.probe.failed', jobId: this.#options.jobId, err: error }, 'Redis still unreachable');
    } finally {
      client.disconnect();
      this.#probing = false;
    }
  }
}
