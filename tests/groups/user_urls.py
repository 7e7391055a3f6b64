from django.urls import path

from tests.groups import user_views

urlpatterns = [
    path("ws/", user_views.socket),
    path("ws/quiet/", user_views.quiet),
    path("ws/quiet-async/", user_views.quiet_async),
    path("ws/revoked-while-opening/", user_views.revoked_while_opening),
    path("ws/ended-after-authentication/", user_views.socket),
    path("ws/store-down-while-opening/", user_views.store_down_while_opening),
    path("ws/disconnected-while-opening/", user_views.disconnected_while_opening),
    path("ws/saved-while-opening/", user_views.saved_while_opening),
    path("ws/token-disconnected-while-opening/", user_views.token_disconnected_while_opening),
    path("ws/session-written/", user_views.session_written),
    path("ws/token/", user_views.token),
    path("ws/stateless-token/", user_views.stateless_token),
    path("ws/model-token/", user_views.model_token),
    path("login/", user_views.log_in),
    path("logout/", user_views.log_out),
    path("session-value/", user_views.session_value),
    path("whoami/", user_views.whoami),
    path("flush/", user_views.flush),
    path("sessions/delete/", user_views.delete_session),
    path("password/", user_views.set_password),
    path("delete-user/", user_views.delete_user),
    path("deactivate/", user_views.deactivate),
    path("send/", user_views.send),
    path("disconnect/", user_views.disconnect),
    path("presence/<str:name>/", user_views.presence),
    path("sessions/hang/", user_views.hang_sessions),
    path("sessions/answer/", user_views.answer_sessions),
    path("tasks/", user_views.tasks),
]
