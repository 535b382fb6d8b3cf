// The API's errors: always `{"error":{"message","type","param","code"}}` with an HTTP status.

export interface ErrorDetail {
  message: string
  type?: string | null
  param?: string | null
  code?: string | null
}

export class ApiError extends Error {
  readonly status: number
  readonly type: string | null
  readonly code: string | null
  readonly param: string | null

  constructor(status: number, detail: ErrorDetail) {
    super(detail.message)
    this.name = 'ApiError'
    this.status = status
    this.type = detail.type ?? null
    this.code = detail.code ?? null
    this.param = detail.param ?? null
  }
}

/** The error a failed answer carries, whatever its body looked like. */
export function errorFrom(status: number, body: unknown): ApiError {
  const detail = (body as { error?: Partial<ErrorDetail> } | null | undefined)?.error
  if (detail && typeof detail.message === 'string') return new ApiError(status, detail as ErrorDetail)
  const text = typeof body === 'string' && body ? body.slice(0, 200) : `HTTP ${status}`
  return new ApiError(status, { message: text })
}

export function isStatus(error: unknown, ...statuses: number[]): boolean {
  return error instanceof ApiError && statuses.includes(error.status)
}
