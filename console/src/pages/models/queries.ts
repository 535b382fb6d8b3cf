import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query'
import { api, unwrap } from '../../api/client'
import type { ModelSpec, NewPrice, UpdateModel } from '../../api/types'

export function useModels() {
  return useQuery({
    queryKey: ['models'],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/models', { signal })),
  })
}

export function useModel(modelId: string) {
  return useQuery({
    queryKey: ['model', modelId],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/models/{id}', { params: { path: { id: modelId } }, signal })),
  })
}

export function usePrices(modelId: string) {
  return useQuery({
    queryKey: ['prices', modelId],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/models/{id}/prices', { params: { path: { id: modelId } }, signal })),
  })
}

export function useRegisterModel() {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: ModelSpec) => unwrap(api.POST('/admin/v1/models', { body })),
    onSuccess: () => client.invalidateQueries({ queryKey: ['models'] }),
  })
}

export function useUpdateModel(modelId: string) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: UpdateModel) => unwrap(api.PATCH('/admin/v1/models/{id}', { params: { path: { id: modelId } }, body })),
    onSuccess: (model) => {
      client.setQueryData(['model', modelId], model)
      void client.invalidateQueries({ queryKey: ['models'] })
    },
  })
}

export function useDeleteModel(modelId: string) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: () => unwrap(api.DELETE('/admin/v1/models/{id}', { params: { path: { id: modelId } } })),
    onSuccess: () => client.invalidateQueries({ queryKey: ['models'] }),
  })
}

export function useAddPrice(modelId: string) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: NewPrice) => unwrap(api.POST('/admin/v1/models/{id}/prices', { params: { path: { id: modelId } }, body })),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: ['prices', modelId] })
      void client.invalidateQueries({ queryKey: ['model', modelId] })
      void client.invalidateQueries({ queryKey: ['models'] })
    },
  })
}
