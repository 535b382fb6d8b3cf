import { useI18n } from '../i18n'
import { Button } from './Button'

/** The foot of a cursor-paginated list: how many are shown, and the next page on request. */
export function LoadMore({ shown, hasMore, loading, onLoadMore }: { shown: number; hasMore: boolean; loading: boolean; onLoadMore: () => void }) {
  const { t, number } = useI18n()
  return (
    <div className="pager">
      <span role="status">{t(hasMore ? 'common.pageOfMore' : 'common.pageOf', { shown: number(shown) })}</span>
      {hasMore ? (
        <Button onClick={onLoadMore} busy={loading}>
          {loading ? t('common.loadingMore') : t('common.loadMore')}
        </Button>
      ) : null}
    </div>
  )
}
