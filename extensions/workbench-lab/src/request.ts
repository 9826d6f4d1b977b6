import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/**
 * An error answered by the Workbench server extension.
 *
 * The server extension answers every failure as JSON `{code, message}`;
 * `code` is the Workbench error code (`node_unreachable`,
 * `not_authenticated`, `not_supported`, ...) so the panel can react to it.
 */
export class WorkbenchAPIError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'WorkbenchAPIError';
  }
}

/**
 * Call the Workbench server extension (`<base_url>/workbench/<endPoint>`).
 *
 * The only place in the front end that talks to the server: tokens for
 * Workbench nodes stay in the Jupyter server, the browser sees only JSON.
 *
 * @param endPoint API path below `workbench/`, with its query string
 * @param init fetch options
 * @returns the decoded JSON body
 * @throws WorkbenchAPIError with the server's `code` and `message`
 */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const requestUrl = URLExt.join(settings.baseUrl, 'workbench', endPoint);

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(requestUrl, init, settings);
  } catch (error) {
    throw new WorkbenchAPIError(
      'jupyter_unreachable',
      'The Jupyter server cannot be reached.',
      0
    );
  }

  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }

  if (!response.ok) {
    if (data && typeof data.code === 'string') {
      throw new WorkbenchAPIError(
        data.code,
        String(data.message ?? response.statusText),
        response.status
      );
    }
    if (response.status === 404) {
      throw new WorkbenchAPIError(
        'extension_missing',
        'The Workbench server extension is not enabled in this Jupyter server.',
        404
      );
    }
    throw new WorkbenchAPIError(
      'http_error',
      `The Jupyter server answered ${response.status} ${response.statusText}.`,
      response.status
    );
  }
  return data as T;
}
