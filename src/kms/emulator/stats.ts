/** Request counts that `GET /_emulator/stats` returns. */
export interface EmulatorStats {
  /** Requests received per operation, including throttled and fault-injected ones. */
  requests: Record<string, number>;
  throttled: number;
  /** Requests that got an injected error, reset or stall. */
  faults: number;
  /** Most cryptographic requests accepted in one wall-clock second since the last reset. */
  maxPerSecond: number;
  /** Seconds with cryptographic traffic in the last 600 seconds, oldest first. `second` is in unix seconds. */
  perSecond: Array<{ second: number; accepted: number; throttled: number }>;
}

const HISTORY_SECONDS = 600;

/**
 * Shared requests-per-second quota over the cryptographic operations, counted
 * in fixed windows aligned to wall-clock seconds, plus the counters behind
 * EmulatorStats.
 */
export class QuotaCounter {
  /** Requests per second, where 0 or Infinity means unlimited. */
  quota: number;

  private readonly seconds = new Int32Array(HISTORY_SECONDS).fill(-1);
  private readonly accepted = new Int32Array(HISTORY_SECONDS);
  private readonly throttledBySecond = new Int32Array(HISTORY_SECONDS);
  private currentSecond = -1;
  /** Requests accepted in `currentSecond`, kept apart from the history so that resetting stats never lifts the quota. */
  private currentAccepted = 0;
  private requests: Record<string, number> = {};
  private throttledTotal = 0;
  private faultsTotal = 0;
  private maxPerSecond = 0;

  constructor(quota: number) {
    this.quota = quota;
  }

  countRequest(operation: string): void {
    this.requests[operation] = (this.requests[operation] ?? 0) + 1;
  }

  countFault(): void {
    this.faultsTotal += 1;
  }

  /** Counts one cryptographic request. Returns false when its second has already used the quota. */
  admit(nowMs: number): boolean {
    const second = Math.floor(nowMs / 1000);
    if (second !== this.currentSecond) {
      this.currentSecond = second;
      this.currentAccepted = 0;
    }
    const slot = this.slotFor(second);
    const unlimited = this.quota === 0 || this.quota === Infinity;
    if (!unlimited && this.currentAccepted >= this.quota) {
      this.throttledBySecond[slot] = (this.throttledBySecond[slot] ?? 0) + 1;
      this.throttledTotal += 1;
      return false;
    }
    this.currentAccepted += 1;
    const accepted = (this.accepted[slot] ?? 0) + 1;
    this.accepted[slot] = accepted;
    if (accepted > this.maxPerSecond) this.maxPerSecond = accepted;
    return true;
  }

  stats(nowMs: number): EmulatorStats {
    const now = Math.floor(nowMs / 1000);
    const perSecond: EmulatorStats['perSecond'] = [];
    for (let second = now - HISTORY_SECONDS + 1; second <= now; second++) {
      const slot = second % HISTORY_SECONDS;
      if (this.seconds[slot] !== second) continue;
      perSecond.push({ second, accepted: this.accepted[slot] ?? 0, throttled: this.throttledBySecond[slot] ?? 0 });
    }
    return {
      requests: { ...this.requests },
      throttled: this.throttledTotal,
      faults: this.faultsTotal,
      maxPerSecond: this.maxPerSecond,
      perSecond,
    };
  }

  /** Clears the statistics. The quota window of the current second keeps its count. */
  resetStats(): void {
    this.seconds.fill(-1);
    this.accepted.fill(0);
    this.throttledBySecond.fill(0);
    this.requests = {};
    this.throttledTotal = 0;
    this.faultsTotal = 0;
    this.maxPerSecond = 0;
  }

  private slotFor(second: number): number {
    const slot = second % HISTORY_SECONDS;
    if (this.seconds[slot] !== second) {
      this.seconds[slot] = second;
      this.accepted[slot] = 0;
      this.throttledBySecond[slot] = 0;
    }
    return slot;
  }
}
