// A uPlot chart of daily series, and under it the same numbers as a real table (the canvas
// is hidden from assistive technology; the table is what it reads).

import { useEffect, useMemo, useRef, useState, type ReactNode } from 'react'
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'
import type { Series } from '../lib/chartData'
import { utcDay } from '../lib/dates'
import { useI18n } from '../i18n'
import { useTheme } from '../theme'
import { DataTable, type Column } from './DataTable'

export interface ChartSeries {
  label: string
  /** Formats a value for the axis (drawing only: tables show the exact figures). */
  format?: (value: number) => string
}

export interface DailyChartProps<Row> {
  title: string
  /** How the x axis writes a unix second; default: the UTC day. */
  formatX?: (unixSeconds: number) => string
  data: Series
  series: readonly ChartSeries[]
  /** The table under the chart: one row per day. */
  tableRows: readonly Row[]
  tableColumns: readonly Column<Row>[]
  rowKey: (row: Row, index: number) => string
  actions?: ReactNode
  height?: number
}

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888'
}

export function DailyChart<Row>({ title, formatX, data, series, tableRows, tableColumns, rowKey, actions, height = 240 }: DailyChartProps<Row>) {
  const { t, dayShort } = useI18n()
  const xText = useMemo(() => formatX ?? ((seconds: number) => dayShort(utcDay(seconds))), [formatX, dayShort])
  const { theme } = useTheme()
  const box = useRef<HTMLDivElement>(null)
  const [width, setWidth] = useState(0)

  useEffect(() => {
    const element = box.current
    if (!element) return
    setWidth(element.clientWidth)
    if (typeof ResizeObserver === 'undefined') return
    const observer = new ResizeObserver(([entry]) => setWidth(Math.floor(entry?.contentRect.width ?? 0)))
    observer.observe(element)
    return () => observer.disconnect()
  }, [])

  useEffect(() => {
    const element = box.current
    if (!element || width < 50 || typeof HTMLCanvasElement === 'undefined') return
    const colors = ['--chart-1', '--chart-2', '--chart-3', '--chart-4'].map(cssVar)
    const text = cssVar('--muted')
    const grid = cssVar('--grid')
    const format = series[0]?.format
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } }
    let chart: uPlot
    try {
      chart = new uPlot(
        {
          width,
          height,
          legend: { show: false },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: true } },
          axes: [
            { ...axis, space: 70, values: (_, ticks) => ticks.map((tick) => xText(tick)) },
            { ...axis, size: 70, values: (_, ticks) => ticks.map((tick) => (format ? format(tick) : String(tick))) },
          ],
          series: [
            {},
            ...series.map((one, index) => ({
              label: one.label,
              stroke: colors[index % colors.length],
              width: 2,
              points: { show: true, size: 5 },
            })),
          ],
        },
        data as uPlot.AlignedData,
        element,
      )
    } catch {
      // A browser without canvas still has the table.
      return
    }
    return () => chart.destroy()
  }, [data, series, width, height, theme, xText])

  return (
    <figure className="chart">
      <figcaption>
        {title}
        {actions ? <span className="actions">{actions}</span> : null}
      </figcaption>
      {series.length > 1 ? (
        <ul className="legend" aria-hidden="true">
          {series.map((one, index) => (
            <li key={one.label}>
              <span className={`swatch swatch-${(index % 4) + 1}`} />
              {one.label}
            </li>
          ))}
        </ul>
      ) : null}
      <div ref={box} className="chart-canvas" aria-hidden="true" />
      <DataTable caption={t('common.chartData', { title })} columns={tableColumns} rows={tableRows} rowKey={rowKey} />
    </figure>
  )
}
