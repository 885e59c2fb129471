/** Renders accepted requests per second as an SVG line chart with the quota as a dashed line. */
export function rateChartSvg(points: Array<{ second: number; accepted: number }>, quota: number, title: string): string {
  const width = 800;
  const height = 360;
  const left = 60;
  const right = 20;
  const top = 40;
  const bottom = 40;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const maxY = Math.max(quota * 1.1, ...points.map((p) => p.accepted), 1);
  const count = Math.max(points.length - 1, 1);
  const x = (i: number) => left + (i / count) * plotWidth;
  const y = (value: number) => top + plotHeight - (value / maxY) * plotHeight;
  const path = points.map((p, i) => `${i === 0 ? 'M' : 'L'}${x(i).toFixed(1)},${y(p.accepted).toFixed(1)}`).join(' ');
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(maxY * f));
  const lines = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${left}" y="24" font-size="14">${escapeXml(title)}</text>`,
    `<line x1="${left}" y1="${top + plotHeight}" x2="${left + plotWidth}" y2="${top + plotHeight}" stroke="black"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotHeight}" stroke="black"/>`,
    ...ticks.map((t) => `<text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t}</text>`),
    `<text x="${left + plotWidth}" y="${height - 10}" text-anchor="end">seconds (${points.length} s)</text>`,
    `<line x1="${left}" y1="${y(quota)}" x2="${left + plotWidth}" y2="${y(quota)}" stroke="red" stroke-dasharray="6 4"/>`,
    `<text x="${left + plotWidth}" y="${y(quota) - 6}" text-anchor="end" fill="red">quota ${quota}/s</text>`,
    `<path d="${path}" fill="none" stroke="steelblue" stroke-width="2"/>`,
    '</svg>',
  ];
  return lines.join('\n') + '\n';
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
