// A small line chart on a canvas: series of (x, y) points, dashed or solid.

export class LineChart {
  constructor(canvas, { title = 'chart', yLabel = '', yMin = 0, yMax = null } = {}) {
    this.title = title;
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.series = new Map();
    this.yLabel = yLabel;
    this.yMin = yMin;
    this.yMax = yMax;
  }

  set(name, { color = '#1f77b4', dashed = false } = {}) {
    if (!this.series.has(name)) this.series.set(name, { color, dashed, points: [] });
    return this.series.get(name);
  }

  add(name, x, y) {
    if (Number.isFinite(y)) this.series.get(name).points.push([x, y]);
  }

  clear() {
    for (const s of this.series.values()) s.points = [];
    this.draw();
  }

  /** Number of points of every series, for tests. */
  counts() {
    return Object.fromEntries([...this.series].map(([k, s]) => [k, s.points.length]));
  }

  /** The chart in words, for screen readers (the canvas's aria-label). */
  describe() {
    const parts = [...this.series].map(([name, s]) => {
      if (!s.points.length) return `${name}: no points yet`;
      const [x, y] = s.points[s.points.length - 1];
      const lowest = Math.min(...s.points.map((p) => p[1]));
      return `${name}: ${s.points.length} points, ${y.toPrecision(3)} at iteration ${x}, lowest ${lowest.toPrecision(3)}`;
    });
    return `${this.title}. ${parts.join('; ')}`;
  }

  draw() {
    const { ctx, canvas } = this;
    canvas.setAttribute('aria-label', this.describe());
    const w = canvas.width, h = canvas.height, l = 48, r = 10, t = 10, b = 28;
    ctx.clearRect(0, 0, w, h);
    const all = [...this.series.values()].flatMap((s) => s.points);
    const xMax = Math.max(1, ...all.map((p) => p[0]));
    const yMax = this.yMax ?? Math.max(1e-6, ...all.map((p) => p[1])) * 1.05;
    const sx = (x) => l + ((w - l - r) * x) / xMax;
    const sy = (y) => t + (h - t - b) * (1 - (y - this.yMin) / (yMax - this.yMin));
    ctx.strokeStyle = '#ccc';
    ctx.fillStyle = '#444';
    ctx.font = '11px sans-serif';
    ctx.lineWidth = 1;
    ctx.setLineDash([]);
    for (let i = 0; i <= 4; i++) {
      const y = this.yMin + ((yMax - this.yMin) * i) / 4;
      ctx.beginPath(); ctx.moveTo(l, sy(y)); ctx.lineTo(w - r, sy(y)); ctx.stroke();
      ctx.fillText(y.toFixed(y < 10 ? 2 : 0), 4, sy(y) + 4);
    }
    ctx.fillText('0', l, h - 8);
    ctx.fillText(`${xMax} iterations`, w - r - 90, h - 8);
    for (const s of this.series.values()) {
      if (!s.points.length) continue;
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.dashed ? 1 : 2.2;
      ctx.setLineDash(s.dashed ? [4, 3] : []);
      ctx.beginPath();
      s.points.forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
      ctx.stroke();
    }
  }
}
